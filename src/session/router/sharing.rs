//! Authorization sessions shared by several instances on one store (PostgreSQL, issue 14):
//! session leases, the session inbox and takeover. Nothing here runs on a store one
//! process uses (sled): the router then starts without [`SessionSharing`].
//!
//! - **Leases.** The instance that starts a session holds it: the record is written with
//!   this instance as holder and a lease of `store.lease_secs`
//!   ([`crate::store::Store::put_session_held`]). Every [`lease_poll`] (a third of the
//!   lease) a lease round renews the leases of every session this instance holds, stops
//!   the running sessions whose lease another instance holds now, and takes over (by
//!   compare-and-swap) up to [`TAKEOVER_BATCH`] sessions whose holder's lease lapsed (its
//!   instance died), resuming them as after a restart: same device code, same card (its
//!   re-send carries the same idempotency `uuid`), no second card. A session that ends is
//!   released as finished (nobody carries it on); stopping hands every lease back, so
//!   another instance takes the sessions over at once. When the leases could not be
//!   renewed for a whole lease (store unreachable), the running sessions are stopped
//!   here: another instance may be carrying them on.
//! - **Inputs on a non-holder.** A click or an OAuth redirect for a session another live
//!   instance holds is sealed into the store's session inbox
//!   ([`crate::store::Store::put_session_input`]); the holder is woken by a notification
//!   (PostgreSQL `NOTIFY`) and also polls its inbox every [`INBOX_POLL`], feeds the input
//!   to its session actor and stores the answer, which wakes the sender. A click is
//!   answered inside the platform's 3 s: after [`RELAY_CLICK_WAIT`] (less when
//!   `connection.callback_budget_secs` is shorter) without the holder's
//!   answer, the receiving instance answers with the toast the pure state machine gives
//!   for the stored record (never empty, never an error); the input stays in the inbox
//!   for the holder (or whoever takes the session over).
//! - **OAuth `state`.** On a shared store a session's `state` starts with its session id's
//!   hex (then 128 random bits), so any instance finds the session from the redirect; the
//!   state must match the stored record, and one use per state holds across instances
//!   through a dedup mark (`oauth_state/<state>`).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::Either;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{Found, OAuthRedirect, RedirectError, RouterActor};
use crate::protocol::event::{CardActionResponse, ToastKind};
use crate::session::SessionSettings;
use crate::session::actor::{
    Click, CodeRedirect, GetSessionView, SessionView, StopSession, click_toast,
};
use crate::session::machine::{self, Action, Choice, Input, SessionRecord, SessionState};
use crate::session::router_state::StateLookup;
use crate::session::store::{
    AnswerInput, FindSession, LeaseClaim, LeaseRound, LoadSession, MarkOnce, RelayInput,
    RelayedInput, SessionStoreActor, TakeInputAnswer, TakeInputs, TakenInput,
};
use crate::session::texts::toast as texts;
use crate::store::Store;

/// How long an instance that received a click for another instance's session waits for
/// that instance's answer before answering from the stored record (the platform's
/// callback deadline is 3 s).
pub const RELAY_CLICK_WAIT: Duration = Duration::from_secs(2);
/// How long a relayed OAuth redirect waits for the holder's answer (a browser, not the
/// callback deadline) before the landing page says the code was received.
pub const RELAY_REDIRECT_WAIT: Duration = Duration::from_secs(5);
/// How often a relayed input's answer is looked for when no notification came.
pub const RELAY_POLL: Duration = Duration::from_millis(100);
/// How often the holder looks into its inbox when no notification came.
pub const INBOX_POLL: Duration = Duration::from_secs(1);
/// Most sessions taken over per lease round.
pub const TAKEOVER_BATCH: usize = 100;
/// Most inbox inputs taken at once.
const INPUTS_PER_TAKE: usize = 100;

/// How often the leases are renewed and lapsed sessions looked for: a third of the lease
/// (at least 100 ms), so two renewals may fail before the lease ends.
pub fn lease_poll(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}

/// How this instance shares authorization sessions with the others on its store.
#[derive(Debug, Clone)]
pub struct SessionSharing {
    /// This instance's name as session holder: random per process start (16 hex digits).
    pub instance: String,
    /// How long a session stays this instance's without renewal (`store.lease_secs`).
    pub lease: Duration,
    /// How long a click relayed to another instance waits for its answer before it is
    /// answered from the stored record: [`RELAY_CLICK_WAIT`], or less to fit the
    /// callback budget ([`SessionSharing::within_callback_budget`]).
    pub click_wait: Duration,
}

/// Kept between a relayed click's wait and the callback budget: the answer's own way out.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

impl SessionSharing {
    /// Sharing under `lease` with a new random instance name.
    pub fn new(lease: Duration) -> SessionSharing {
        SessionSharing {
            instance: format!("{:016x}", rand::random::<u64>()),
            lease,
            click_wait: RELAY_CLICK_WAIT,
        }
    }

    /// The same, a relayed click waiting at most `callback_budget`
    /// (`connection.callback_budget_secs`) less a margin (at least 100 ms).
    pub fn within_callback_budget(mut self, callback_budget: Duration) -> SessionSharing {
        self.click_wait = RELAY_CLICK_WAIT
            .min(callback_budget.saturating_sub(ANSWER_MARGIN))
            .max(Duration::from_millis(100));
        self
    }
}

/// The router's sharing state.
pub(super) struct Shared {
    settings: SessionSharing,
    /// Woken by the store's inbox notifications (answers to relayed inputs).
    wake: Arc<Notify>,
    inbox_busy: bool,
    inbox_again: bool,
    round_busy: bool,
    /// When a lease round last renewed the leases (unix ms; 0: not yet).
    renewed_ms: u64,
}

impl Shared {
    /// Starts listening to the store's session inbox for `settings.instance`: each
    /// notification wakes the relayed inputs waiting for an answer and makes `router`
    /// look into its inbox.
    pub(super) fn watch(
        settings: SessionSharing,
        store: &dyn Store,
        router: Addr<RouterActor>,
    ) -> Shared {
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        let router = router.downgrade();
        store.watch_sessions(
            &settings.instance,
            Box::new(move || {
                woken.notify_waiters();
                if let Some(router) = router.upgrade() {
                    router.do_send(CheckInbox);
                }
            }),
        );
        Shared {
            settings,
            wake,
            inbox_busy: false,
            inbox_again: false,
            round_busy: false,
            renewed_ms: 0,
        }
    }

    /// This instance's name.
    pub(super) fn instance(&self) -> &str {
        &self.settings.instance
    }

    /// The end of a lease taken or renewed at `now_ms`.
    pub(super) fn lease_until(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.settings.lease.as_millis() as u64)
    }
}

/// A new session's OAuth `state` on a shared store: the session id's 32 hex digits, then
/// 128 random bits (32 hex digits).
pub(super) fn state_for(session_uuid: &str) -> String {
    format!("{session_uuid}{}", uuid::Uuid::new_v4().simple())
}

/// The session a shared-store OAuth `state` names, if it is shaped like one.
fn session_of_state(state: &str) -> Option<String> {
    (state.len() == 64 && state.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("as_{}", &state[..32]))
}

/// The dedup mark that makes an OAuth `state` usable once across instances.
fn state_mark(state: &str) -> Vec<u8> {
    let mut mark = b"oauth_state/".to_vec();
    mark.extend_from_slice(state.as_bytes());
    mark
}

/// The answer the pure state machine gives a click on `record` as stored: what a
/// non-holder answers when the holder did not answer in time.
fn fallback_click(
    record: &SessionRecord,
    click: &Click,
    now_ms: u64,
    settings: &SessionSettings,
) -> CardActionResponse {
    let (_, actions) = machine::step_with(
        record,
        Input::Clicked {
            operator_open_id: click.operator_open_id.clone(),
            choice: click.choice,
        },
        now_ms,
        &settings.cadence,
    );
    let locale = record.locale.unwrap_or(settings.locale);
    let toast = actions
        .iter()
        .find_map(|a| match a {
            Action::AnswerClick(t) => Some(click_toast(*t, locale)),
            _ => None,
        })
        .unwrap_or_else(|| texts::fixed(ToastKind::Info, texts::OPENING, locale));
    CardActionResponse {
        toast: Some(toast),
        card: None,
    }
}

/// Relays `msg` and waits up to `wait` for its answer (woken by `wake`, polled every
/// [`RELAY_POLL`]). `None`: not relayed, or no answer in time.
async fn relay(
    store: Addr<SessionStoreActor>,
    wake: Arc<Notify>,
    msg: RelayInput,
    wait: Duration,
) -> Option<Vec<u8>> {
    let session_id = msg.session_id.clone();
    let id = match store.send(msg).await {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) | Err(_) => return None,
        Ok(Err(e)) => {
            warn!(session_id = %session_id, error = %e, "input not handed to the session's holder");
            return None;
        }
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Ok(Ok(Some(answer))) = store.send(TakeInputAnswer { id }).await {
            return Some(answer);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        let _ = tokio::time::timeout_at(deadline.min(now + RELAY_POLL), notified).await;
    }
}

/// Makes the router look into its session inbox (a notification came, or the poll).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(super) struct CheckInbox;

impl Handler<CheckInbox> for RouterActor {
    type Result = ();

    fn handle(&mut self, _: CheckInbox, ctx: &mut Context<Self>) {
        self.check_inbox(ctx);
    }
}

/// Stops the router and its sessions **without** handing their leases back, as if the
/// process died (tests of the takeover): the other instances on the store carry the
/// sessions on once the leases lapse. Without a shared store, as `StopRouter` without
/// the flush.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AbandonSessions;

impl Handler<AbandonSessions> for RouterActor {
    type Result = ();

    fn handle(&mut self, _: AbandonSessions, ctx: &mut Context<Self>) {
        for (_, addr) in self.sessions.drain() {
            addr.do_send(StopSession);
        }
        self.state.all_stopped();
        self.sharing = None;
        ctx.stop();
    }
}

impl RouterActor {
    /// Starts the lease rounds (the first at once) and the inbox poll.
    pub(super) fn start_sharing(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = &self.sharing else {
            return;
        };
        info!(
            instance = %shared.instance(),
            lease_secs = shared.settings.lease.as_secs_f64(),
            "authorization sessions shared with the other instances on the store"
        );
        let poll = lease_poll(shared.settings.lease);
        self.lease_round(ctx);
        ctx.run_interval(poll, |act, ctx| act.lease_round(ctx));
        ctx.run_interval(INBOX_POLL, |act, ctx| act.check_inbox(ctx));
    }

    /// The lease to take when a session is found (shared store), else `None`.
    pub(super) fn lease_claim(&self) -> Option<LeaseClaim> {
        let shared = self.sharing.as_ref()?;
        let now = self.deps.clock.now_ms();
        Some(LeaseClaim {
            holder: shared.instance().to_string(),
            lease_until_ms: shared.lease_until(now),
            now_ms: now,
        })
    }

    /// One lease round on the janitor (see the module docs); skipped while one runs.
    fn lease_round(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.sharing.as_mut() else {
            return;
        };
        if shared.round_busy {
            return;
        }
        shared.round_busy = true;
        let now = self.deps.clock.now_ms();
        let round = self.janitor.send(LeaseRound {
            holder: shared.instance().to_string(),
            lease_until_ms: shared.lease_until(now),
            now_ms: now,
            running: self.sessions.keys().map(|k| k.to_string()).collect(),
            limit: TAKEOVER_BATCH,
        });
        ctx.spawn(round.into_actor(self).map(move |res, act, ctx| {
            let Some(shared) = act.sharing.as_mut() else {
                return;
            };
            shared.round_busy = false;
            let report = match res {
                Ok(Ok(report)) => {
                    shared.renewed_ms = now;
                    report
                }
                Ok(Err(e)) => {
                    let lease_ms = shared.settings.lease.as_millis() as u64;
                    if shared.renewed_ms > 0
                        && now.saturating_sub(shared.renewed_ms) > lease_ms
                        && !act.sessions.is_empty()
                    {
                        warn!(error = %e, sessions = act.sessions.len(), "session leases not renewed for a whole lease: the sessions running here are stopped (another instance may carry them on; this one takes them back once the store answers)");
                        for (_, addr) in act.sessions.drain() {
                            addr.do_send(StopSession);
                        }
                        act.state.all_stopped();
                    } else {
                        warn!(error = %e, "session leases not renewed; retried at the next round");
                    }
                    return;
                }
                Err(_) => return,
            };
            for id in report.lost {
                let Some(addr) = act.sessions.remove(id.as_str()) else {
                    continue;
                };
                warn!(session_id = %id, "session now held by another instance; stopped here");
                ctx.spawn(addr.send(GetSessionView).into_actor(act).map(
                    move |view, act, _| {
                        if let Ok(view) = view {
                            act.state.session_finished(&view.open_id, &id);
                        }
                        addr.do_send(StopSession);
                    },
                ));
            }
            let mut taken = 0u64;
            for record in report.taken {
                if act.sessions.contains_key(record.session_id.as_str()) {
                    continue;
                }
                info!(
                    session_id = %record.session_id,
                    open_id = %record.open_id,
                    state = record.state.as_str(),
                    "session taken over from an instance whose lease lapsed"
                );
                act.spawn_session(record, true, None);
                taken += 1;
            }
            if taken > 0 {
                act.deps.metrics.session_lease_takeovers(taken);
                // Inputs may be waiting for them.
                act.check_inbox(ctx);
            }
            if report.released > 0 {
                debug!(
                    released = report.released,
                    "lapsed finished sessions released"
                );
            }
        }));
    }

    /// Takes the inputs waiting in the inbox for the sessions held here and answers them;
    /// when a take is running, another follows it.
    pub(super) fn check_inbox(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.sharing.as_mut() else {
            return;
        };
        if shared.inbox_busy {
            shared.inbox_again = true;
            return;
        }
        shared.inbox_busy = true;
        let take = self.deps.store.send(TakeInputs {
            holder: shared.instance().to_string(),
            limit: INPUTS_PER_TAKE,
        });
        ctx.spawn(take.into_actor(self).map(|res, act, ctx| {
            let inputs = match res {
                Ok(Ok(inputs)) => inputs,
                Ok(Err(e)) => {
                    debug!(error = %e, "session inbox not read");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            let full = inputs.len() == INPUTS_PER_TAKE;
            for taken in inputs {
                act.answer_taken(taken, ctx);
            }
            if let Some(shared) = act.sharing.as_mut() {
                shared.inbox_busy = false;
                if std::mem::take(&mut shared.inbox_again) || full {
                    act.check_inbox(ctx);
                }
            }
        }));
    }

    /// Feeds one input taken from the inbox to its session and stores the answer.
    fn answer_taken(&mut self, taken: TakenInput, ctx: &mut Context<Self>) {
        let TakenInput {
            id,
            session_id,
            input,
        } = taken;
        let input = match input {
            Ok(input) => input,
            Err(e) => {
                // The sender answers from the stored record.
                warn!(session_id = %session_id, error = %e, "relayed input unreadable; dropped");
                return;
            }
        };
        debug!(session_id = %session_id, kind = input.kind(), "relayed input taken");
        let store = self.deps.store.clone();
        let fut = self.find_session(session_id.clone()).then(move |found, act, _| {
            let now = act.deps.clock.now_ms();
            let settings = act.deps.settings.clone();
            let answer: ResponseActFuture<Self, Option<Vec<u8>>> = match (found, input) {
                (
                    found,
                    RelayedInput::Click {
                        operator_open_id,
                        authorize,
                        card_token,
                    },
                ) => {
                    let click = Click {
                        operator_open_id,
                        choice: if authorize {
                            Choice::Authorize
                        } else {
                            Choice::Decline
                        },
                        card_token,
                    };
                    let locale = settings.locale;
                    let toast = |t| CardActionResponse {
                        toast: Some(t),
                        card: None,
                    };
                    let answer = match found {
                        Ok(Found::Running(addr)) => {
                            let asked: ResponseActFuture<Self, Option<Vec<u8>>> =
                                Box::pin(addr.send(click).into_actor(act).map(|res, _, _| {
                                    res.ok().and_then(|a| serde_json::to_vec(&a).ok())
                                }));
                            return asked;
                        }
                        Ok(Found::Remote(record)) => {
                            fallback_click(&record, &click, now, &settings)
                        }
                        Ok(Found::Finished(state, own)) => toast(texts::already_finished(
                            state.as_str(),
                            own.unwrap_or(locale),
                        )),
                        Ok(Found::Unknown) => toast(texts::fixed(
                            ToastKind::Warning,
                            texts::REQUEST_NO_LONGER_VALID,
                            locale,
                        )),
                        Err(_) => return Box::pin(fut::ready(None)),
                    };
                    Box::pin(fut::ready(serde_json::to_vec(&answer).ok()))
                }
                (Ok(Found::Running(addr)), RelayedInput::Redirect { code }) => {
                    Box::pin(addr.send(CodeRedirect { code }).into_actor(act).map(
                        |res, _, _| res.ok().and_then(|view| serde_json::to_vec(&view.state).ok()),
                    ))
                }
                (found, RelayedInput::Redirect { .. }) => {
                    if let Ok(Found::Remote(_)) = found {
                        warn!(session_id = %session_id, "relayed redirect for a session another instance holds now; not handed on");
                    }
                    // The sender shows the stored state.
                    Box::pin(fut::ready(Some(b"null".to_vec())))
                }
            };
            answer
        });
        ctx.spawn(fut.map(move |answer, _, _| {
            if let Some(answer) = answer {
                store.do_send(AnswerInput { id, answer });
            }
        }));
    }

    /// Hands a click on a session another instance holds to it, and answers with its
    /// answer, or after [`RELAY_CLICK_WAIT`] with the toast the state machine gives for
    /// the stored record.
    pub(super) fn relay_click(
        &mut self,
        record: SessionRecord,
        click: Click,
    ) -> ResponseActFuture<Self, CardActionResponse> {
        let now = self.deps.clock.now_ms();
        let fallback = fallback_click(&record, &click, now, &self.deps.settings);
        let Some(shared) = &self.sharing else {
            return Box::pin(fut::ready(fallback));
        };
        self.deps.metrics.session_input_relayed("click");
        let msg = RelayInput {
            session_id: record.session_id.clone(),
            sender: shared.instance().to_string(),
            input: RelayedInput::Click {
                operator_open_id: click.operator_open_id.clone(),
                authorize: click.choice == Choice::Authorize,
                card_token: click.card_token.clone(),
            },
            now_ms: now,
        };
        let wait = relay(
            self.deps.store.clone(),
            shared.wake.clone(),
            msg,
            shared.settings.click_wait,
        );
        let session_id = record.session_id;
        Box::pin(wait.into_actor(self).map(move |answer, _, _| {
            match answer
                .and_then(|b| serde_json::from_slice::<CardActionResponse>(&b).ok())
                .filter(|a| a.toast.is_some())
            {
                Some(answer) => answer,
                None => {
                    info!(session_id = %session_id, "the session's holder did not answer the click in time; answered from the stored record");
                    fallback
                }
            }
        }))
    }

    /// [`OAuthRedirect`] on a shared store (see the module docs).
    pub(super) fn redirect_shared(
        &mut self,
        msg: OAuthRedirect,
    ) -> ResponseActFuture<Self, Result<SessionView, RedirectError>> {
        let session_id = match self.state.lookup_state(&msg.state) {
            StateLookup::Pending(id) => Some(id.to_string()),
            StateLookup::Used => return Box::pin(fut::ready(Err(RedirectError::StateAlreadyUsed))),
            StateLookup::Unknown => session_of_state(&msg.state),
        };
        let Some(session_id) = session_id else {
            return Box::pin(fut::ready(Err(RedirectError::UnknownState)));
        };
        let code = match (msg.code, msg.error.as_deref()) {
            (Some(code), _) => Some(code),
            (None, Some(error)) => {
                info!(session_id, error, "authorization refused on the page");
                None
            }
            (None, None) => return Box::pin(fut::ready(Err(RedirectError::MissingCode))),
        };
        let state = msg.state;
        let find = self.deps.store.send(FindSession {
            session_id,
            claim: self.lease_claim(),
            oauth_state: Some(state.clone()),
        });
        Box::pin(
            find.into_actor(self)
                .then(move |res, act, _| {
                    let found = match res {
                        Ok(Ok(Some(found))) => found,
                        Ok(Ok(None)) => {
                            return Either::Left(fut::ready(Err(RedirectError::UnknownState)));
                        }
                        _ => return Either::Left(fut::ready(Err(RedirectError::Stopping))),
                    };
                    let now = act.deps.clock.now_ms();
                    // One use per state, whichever instance the redirects land on.
                    let mark = act.deps.store.send(MarkOnce {
                        mark: state_mark(&state),
                        expires_at_ms: now + act.deps.settings.dedup_ttl.as_millis() as u64,
                        now_ms: now,
                    });
                    act.state.use_state(&state);
                    Either::Right(mark.into_actor(act).then(move |first, act, _| {
                        let step: ResponseActFuture<Self, Result<SessionView, RedirectError>> =
                            match first {
                                Ok(Ok(true)) => act.redirect_found(found.0, found.1, code),
                                Ok(Ok(false)) => {
                                    Box::pin(fut::ready(Err(RedirectError::StateAlreadyUsed)))
                                }
                                _ => Box::pin(fut::ready(Err(RedirectError::Stopping))),
                            };
                        step
                    }))
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

    /// The redirect for a found (and maybe claimed) session: to its actor here, or handed
    /// to its holder.
    fn redirect_found(
        &mut self,
        record: SessionRecord,
        claim: crate::store::SessionClaim,
        code: Option<crate::secret::Secret<String>>,
    ) -> ResponseActFuture<Self, Result<SessionView, RedirectError>> {
        match self.found(record, claim) {
            Found::Running(addr) => Box::pin(
                addr.send(CodeRedirect { code })
                    .into_actor(self)
                    .map(|res, _, _| res.map_err(|_| RedirectError::Stopping)),
            ),
            Found::Finished(state, _) => {
                Box::pin(fut::ready(Err(RedirectError::SessionEnded(state.as_str()))))
            }
            Found::Unknown => Box::pin(fut::ready(Err(RedirectError::UnknownState))),
            Found::Remote(record) => {
                let Some(shared) = &self.sharing else {
                    return Box::pin(fut::ready(Err(RedirectError::Stopping)));
                };
                self.deps.metrics.session_input_relayed("redirect");
                let msg = RelayInput {
                    session_id: record.session_id.clone(),
                    sender: shared.instance().to_string(),
                    input: RelayedInput::Redirect { code },
                    now_ms: self.deps.clock.now_ms(),
                };
                let wait = relay(
                    self.deps.store.clone(),
                    shared.wake.clone(),
                    msg,
                    RELAY_REDIRECT_WAIT,
                );
                let store = self.deps.store.clone();
                Box::pin(
                    async move {
                        let answered: Option<SessionState> = match wait.await {
                            Some(bytes) => serde_json::from_slice(&bytes).ok().flatten(),
                            None => {
                                info!(session_id = %record.session_id, "the session's holder did not answer the redirect in time; it takes the code from the inbox later");
                                None
                            }
                        };
                        let stored = store
                            .send(LoadSession {
                                session_id: record.session_id.clone(),
                            })
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten();
                        let mut view = SessionView::of(stored.as_ref().unwrap_or(&record));
                        if let Some(state) = answered {
                            view.state = state;
                        }
                        Ok(view)
                    }
                    .into_actor(self),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_state_names_its_session_and_nothing_else_does() {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let state = state_for(&uuid);
        assert_eq!(session_of_state(&state), Some(format!("as_{uuid}")));
        assert_ne!(state_for(&uuid), state, "128 random bits each time");
        assert_eq!(session_of_state("bogus"), None);
        assert_eq!(session_of_state(&uuid), None, "an unshared (old) state");
        assert_eq!(lease_poll(Duration::from_secs(15)), Duration::from_secs(5));
        assert_eq!(
            lease_poll(Duration::from_millis(90)),
            Duration::from_millis(100)
        );
    }
}
