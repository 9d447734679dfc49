//! The AuthSessionActor: a thin shell around [`machine::step_with`], one per authorization.
//!
//! Accepts: [`Click`] (a `card.action.trigger` for this session; replies the callback
//! answer), [`CodeRedirect`] (the authorization-code redirect, already matched by `state`),
//! [`GetSessionView`], [`StopSession`].
//! Sends: [`SessionFinished`] to the router when the session is terminal and its last
//! card update is done (then it stops).
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
//! (polls, exchanges) first takes a slot from the shared [`PollPacer`].

use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::openapi::{
    DevicePoll, OpenApiClient, OpenApiError, PkcePair, RetryAdvice, UserInfo, UserTokenGrant,
};
use crate::protocol::event::{CardActionResponse, Toast, ToastKind};
use crate::secret::Secret;
use crate::vault::actor::StoreGrant;
use crate::vault::{GrantRecord, GrantStatus, TokenVaultActor, UserIdentity, unix_now_ms};

use super::SessionSettings;
use super::cards::{AuthorizeCard, CardLocale, FinalCard, final_card};
use super::machine::{
    self, Action, CardKind, Choice, ClickToast, FailureReason, Input, PollAnswer, SessionRecord,
    SessionState,
};
use super::pacer::{AcquirePollSlot, PollPacer};
use super::store::{PutSession, SessionStoreActor};

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
    /// The terminal state.
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

// ----- the actor -----------------------------------------------------------------------

/// What every session shares (cheap clones).
#[derive(Clone)]
pub struct SessionDeps {
    /// OpenAPI client (same thread).
    pub client: OpenApiClient,
    /// Session persistence.
    pub store: Addr<SessionStoreActor>,
    /// Where grants go.
    pub vault: Addr<TokenVaultActor>,
    /// The shared token-endpoint pacer.
    pub pacer: Addr<PollPacer>,
    /// Receives [`SessionFinished`].
    pub finished: Recipient<SessionFinished>,
    /// Settings.
    pub settings: Rc<SessionSettings>,
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
    visible: SessionView,
    deps: SessionDeps,
    first_input: Option<Input>,
    held: Option<Box<Held>>,
    /// Card-update token of the user's Authorize click and when it arrived.
    card_token: Option<(Secret<String>, u64)>,
    deadline_timer: Option<SpawnHandle>,
    poll_timer: Option<SpawnHandle>,
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
    pub fn new(record: SessionRecord, resumed: bool, deps: SessionDeps) -> AuthSessionActor {
        AuthSessionActor {
            visible: SessionView::of(&record),
            record,
            deps,
            first_input: Some(if resumed {
                Input::Resumed
            } else {
                Input::Begin
            }),
            held: None,
            card_token: None,
            deadline_timer: None,
            poll_timer: None,
            in_flight: 0,
            writes_pending: 0,
            finished: false,
            on_stored: Vec::new(),
        }
    }

    /// Steps the machine. When the record changed, writes it (the mailbox waits), then
    /// performs `actions`; returns the actions for the caller to pick the click answer
    /// from (they are performed regardless).
    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) -> Vec<Action> {
        let now = unix_now_ms();
        let (next, actions) =
            machine::step_with(&self.record, input, now, &self.deps.settings.cadence);
        let changed = next != self.record;
        if changed {
            debug!(session_id = %next.session_id, from = self.record.state.as_str(), to = next.state.as_str(), "session transition");
        }
        self.record = next;
        if changed {
            let write = self.deps.store.send(PutSession {
                record: self.record.clone(),
            });
            let todo = actions.clone();
            self.writes_pending += 1;
            ctx.wait(write.into_actor(self).map(move |res, act, ctx| {
                act.writes_pending -= 1;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(session_id = %act.record.session_id, error = %e, "session record not stored")
                    }
                    Err(e) => {
                        warn!(session_id = %act.record.session_id, error = %e, "session store gone")
                    }
                }
                act.visible = SessionView::of(&act.record);
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
        if self.visible == SessionView::of(&self.record) {
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
                        received_ms: unix_now_ms(),
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
        self.deps.finished.do_send(SessionFinished {
            session_id: self.record.session_id.clone(),
            open_id: self.record.open_id.clone(),
            state: self.record.state,
        });
        ctx.stop();
    }

    fn wake_at(&mut self, at: u64, ctx: &mut Context<Self>) {
        let delay = Duration::from_millis(at.saturating_sub(unix_now_ms()) + TIMER_SLACK_MS);
        let is_deadline = at == self.record.deadline_ms;
        let handle = ctx.run_later(delay, move |act, ctx| {
            if is_deadline {
                act.deadline_timer = None;
            } else {
                act.poll_timer = None;
            }
            act.feed(Input::Wake, ctx);
        });
        let slot = if is_deadline {
            &mut self.deadline_timer
        } else {
            &mut self.poll_timer
        };
        if let Some(old) = slot.replace(handle) {
            ctx.cancel_future(old);
        }
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

    fn locale(&self) -> CardLocale {
        self.deps.settings.locale
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
            let minutes = r.deadline_ms.saturating_sub(unix_now_ms()).div_ceil(60_000);
            let card = AuthorizeCard {
                app_name: &settings.app_name,
                session_id: &r.session_id,
                target_url: &target,
                scopes: &r.scopes,
                expires_in_minutes: minutes.max(1),
                use_applink: settings.use_applink,
                report_authorize_click: settings.report_authorize_click,
                locale: settings.locale,
            }
            .build()
            .to_value();
            let open_id = r.open_id.clone();
            let uuid = r.session_id.clone();
            self.spawn_io(ctx, async move {
                Done::Input(match client.send_card(&open_id, &card, Some(&uuid)).await {
                    Ok(sent) => Input::CardDelivered {
                        message_id: sent.message_id,
                    },
                    Err(e) => {
                        warn!(error = %e, "authorization card not sent");
                        Input::CardFailed { code: e.code() }
                    }
                })
            });
            return;
        }
        let Some(message_id) = r.card_message_id.clone() else {
            return;
        };
        let card = self.final_card(kind).to_value();
        let now = unix_now_ms();
        let token = self
            .card_token
            .take()
            .filter(|(_, at)| now.saturating_sub(*at) < CARD_TOKEN_USE_FOR_MS)
            .map(|(t, _)| t);
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
        self.spawn_io(ctx, async move {
            if pacer.send(AcquirePollSlot).await.is_err() {
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
            let _ = pacer.send(AcquirePollSlot).await;
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
            refresh_token: grant.refresh_token.unwrap_or_default(),
            scopes: grant.scope.split_whitespace().map(str::to_string).collect(),
            consent_ms: at,
            last_used_ms: at,
            status: GrantStatus::Active,
            status_code: None,
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
        let (kind, zh, en) = match toast {
            ClickToast::Opening => (
                ToastKind::Info,
                "正在打开授权页面".to_string(),
                "Opening the authorization page".to_string(),
            ),
            ClickToast::Declined => (
                ToastKind::Info,
                "已拒绝授权".to_string(),
                "Authorization declined".to_string(),
            ),
            ClickToast::NotYours => (
                ToastKind::Warning,
                "此授权请求不是发给你的".to_string(),
                "This authorization is for someone else".to_string(),
            ),
            ClickToast::AlreadyFinished(state) => (
                ToastKind::Info,
                format!("此授权已结束（{}）", state.as_str()),
                format!("This authorization has already ended ({})", state.as_str()),
            ),
        };
        click_toast(kind, zh, en, self.locale())
    }
}

/// A toast in both languages, `content` in `locale`.
pub(crate) fn click_toast(kind: ToastKind, zh: String, en: String, locale: CardLocale) -> Toast {
    let content = match locale {
        CardLocale::ZhCn => zh.clone(),
        CardLocale::EnUs => en.clone(),
    };
    Toast {
        kind,
        content,
        i18n: Some([("zh_cn".to_string(), zh), ("en_us".to_string(), en)].into()),
    }
}

/// The toast answered to a click on a finished (stored, not running) session.
pub(crate) fn finished_toast(state: SessionState, locale: CardLocale) -> Toast {
    click_toast(
        ToastKind::Info,
        format!("此授权已结束（{}）", state.as_str()),
        format!("This authorization has already ended ({})", state.as_str()),
        locale,
    )
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
        if let Some(input) = self.first_input.take() {
            self.feed(input, ctx);
        }
    }
}

impl Handler<Click> for AuthSessionActor {
    type Result = ResponseActFuture<Self, CardActionResponse>;

    fn handle(&mut self, msg: Click, ctx: &mut Context<Self>) -> Self::Result {
        let by_user = msg.operator_open_id == self.record.open_id;
        if by_user && msg.choice == Choice::Authorize && !msg.card_token.is_empty() {
            self.card_token = Some((msg.card_token.clone(), unix_now_ms()));
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
                .map(|(), act, _| act.visible.clone()),
        )
    }
}

impl Handler<GetSessionView> for AuthSessionActor {
    type Result = SessionView;

    fn handle(&mut self, _: GetSessionView, _: &mut Context<Self>) -> SessionView {
        self.visible.clone()
    }
}

impl Handler<StopSession> for AuthSessionActor {
    type Result = ();

    fn handle(&mut self, _: StopSession, ctx: &mut Context<Self>) {
        self.finished = true;
        ctx.stop();
    }
}
