//! The authorization session as a pure state machine: `step(record, input, now) ->
//! (record, actions)`. No actors, no I/O, no clock, no randomness: the AuthSessionActor
//! feeds inputs (platform answers, clicks, timers), writes the returned record to the
//! store **before** it performs any action, then performs the actions in order.
//!
//! States (`DESIGN.md`, "One authorization, end to end"):
//! `created → card_sent → awaiting_user → exchanging → authorized`, and from any
//! non-terminal state `expired | denied | failed`.
//!
//! - `created`: the record exists; the device authorization is being requested (device
//!   flow) and the card is being sent.
//! - `card_sent`: the card reached the user; polling (device flow) has started at the slow
//!   cadence.
//! - `awaiting_user`: the user clicked Authorize, or the platform reported the code as
//!   pending: polling at the server's `interval`.
//! - `exchanging`: a token arrived (device poll) or a code is being exchanged (code flow);
//!   the identity is being checked and the grant stored.
//!
//! Tokens never enter the record: the actor holds a token in memory between
//! [`Input::TokenIssued`] and [`Input::GrantStored`]. A session found in `exchanging` after
//! a restart therefore fails with reason `interrupted` (the user can start again).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::cards::CardLocale;
use crate::config::AuthFlow;
use crate::secret::Secret;

/// Added to the poll interval on each `slow_down` answer (RFC 8628 §3.5), seconds.
pub const SLOW_DOWN_STEP_SECS: u64 = 5;
/// Largest poll interval, seconds.
pub const MAX_POLL_INTERVAL_SECS: u64 = 60;
/// Poll interval while the user has not clicked Authorize, as a multiple of the server's
/// `interval` (at least [`IDLE_POLL_MIN_SECS`]).
pub const IDLE_POLL_FACTOR: u64 = 3;
/// Smallest idle poll interval, seconds.
pub const IDLE_POLL_MIN_SECS: u64 = 15;
/// Delay before retrying a poll that failed with a retryable error, seconds.
pub const RETRY_POLL_SECS: u64 = 10;

/// The poll cadence that is this service's choice (the server's `interval` and the
/// `slow_down` step are the platform's): how much slower a session polls before the user
/// clicked Authorize, and how long it waits after a retryable failure. [`step`] uses
/// [`Cadence::default`]; tests and benches shorten it through [`step_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Idle interval = server `interval` × this factor (before the click).
    pub idle_factor: u64,
    /// Smallest idle interval, milliseconds.
    pub idle_min_ms: u64,
    /// Wait after a retryable poll failure, milliseconds.
    pub retry_ms: u64,
}

impl Default for Cadence {
    /// [`IDLE_POLL_FACTOR`], [`IDLE_POLL_MIN_SECS`], [`RETRY_POLL_SECS`].
    fn default() -> Self {
        Cadence {
            idle_factor: IDLE_POLL_FACTOR,
            idle_min_ms: IDLE_POLL_MIN_SECS * 1000,
            retry_ms: RETRY_POLL_SECS * 1000,
        }
    }
}

/// The state of a session, as the control API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Recorded; device authorization and card under way.
    Created,
    /// The card reached the user.
    CardSent,
    /// The user is deciding (clicked Authorize, or the code is pending).
    AwaitingUser,
    /// A token or code arrived; identity check and storage under way.
    Exchanging,
    /// The grant is in the vault. Terminal.
    Authorized,
    /// The deadline passed or the device code expired. Terminal.
    Expired,
    /// The user declined (card button or the authorization page). Terminal.
    Denied,
    /// Something failed; see the reason. Terminal.
    Failed,
}

impl SessionState {
    /// Every state, in the order of the flow.
    pub const ALL: [SessionState; 8] = [
        SessionState::Created,
        SessionState::CardSent,
        SessionState::AwaitingUser,
        SessionState::Exchanging,
        SessionState::Authorized,
        SessionState::Expired,
        SessionState::Denied,
        SessionState::Failed,
    ];

    /// The state named `name` (as [`SessionState::as_str`] writes it); `None` when
    /// unknown.
    pub fn parse(name: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True for `authorized`, `expired`, `denied` and `failed`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionState::Authorized
                | SessionState::Expired
                | SessionState::Denied
                | SessionState::Failed
        )
    }

    /// The lowercase name used by the control API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Created => "created",
            SessionState::CardSent => "card_sent",
            SessionState::AwaitingUser => "awaiting_user",
            SessionState::Exchanging => "exchanging",
            SessionState::Authorized => "authorized",
            SessionState::Expired => "expired",
            SessionState::Denied => "denied",
            SessionState::Failed => "failed",
        }
    }
}

/// Why a session failed (the control API's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The device authorization request was refused.
    DeviceAuthorizationFailed,
    /// The card could not be sent to the user.
    CardNotSent,
    /// The token endpoint refused the poll or the code exchange.
    ExchangeFailed,
    /// The token belongs to someone else (a forwarded link); it was discarded.
    WrongUser,
    /// `user_info` with the new token failed.
    IdentityCheckFailed,
    /// The vault could not store the grant.
    VaultFailed,
    /// The service restarted while a token was in flight; start again.
    Interrupted,
}

impl FailureReason {
    /// The snake_case name used by the control API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::DeviceAuthorizationFailed => "device_authorization_failed",
            FailureReason::CardNotSent => "card_not_sent",
            FailureReason::ExchangeFailed => "exchange_failed",
            FailureReason::WrongUser => "wrong_user",
            FailureReason::IdentityCheckFailed => "identity_check_failed",
            FailureReason::VaultFailed => "vault_failed",
            FailureReason::Interrupted => "interrupted",
        }
    }
}

/// Device-flow progress kept in the record (RFC 8628 as the platform implements it,
/// `lark-openapi-auth.md` §2.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// The device code polled with (secret).
    pub device_code: Secret<String>,
    /// The page the card's Authorize button opens (carries the user code). Emptied once
    /// the card was delivered: the card is never sent again after that, and the user code
    /// is kept no longer than needed (it also saves memory per pending session).
    pub verification_uri_complete: String,
    /// Current poll interval, seconds (server `interval`, plus 5 per `slow_down`).
    pub interval_secs: u64,
    /// When the device code expires, unix milliseconds.
    pub expires_at_ms: u64,
}

/// Authorization-code flow data kept in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeFlowProgress {
    /// The `state` parameter of the authorize URL; the redirect must carry it back.
    pub oauth_state: String,
    /// The PKCE `code_verifier` (secret); its S256 challenge is in the authorize URL.
    pub code_verifier: Secret<String>,
}

/// Everything persisted about one session. Times are unix milliseconds.
///
/// Its serde form redacts the secrets (device code, `code_verifier`) like every
/// [`Secret`]: it is fit for logs and the control API, not for the store. The store
/// encodes a record with the secrets sealed by the vault's key (issue 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Unique id (goes into the card's button values).
    pub session_id: String,
    /// The user who must authorize.
    pub open_id: String,
    /// Requested scopes (always including `offline_access`). Shared: the sessions asking
    /// for the configured default scopes hold one list.
    #[serde(with = "shared_list")]
    pub scopes: Arc<[String]>,
    /// Device or authorization-code flow.
    pub flow: AuthFlow,
    /// Current state.
    pub state: SessionState,
    /// Why it failed, when `state` is `failed`.
    pub reason: Option<FailureReason>,
    /// The platform's error code behind a failure, if any.
    pub platform_code: Option<i64>,
    /// Creation time.
    pub created_at_ms: u64,
    /// Time of the last transition.
    pub updated_at_ms: u64,
    /// The session expires at this time.
    pub deadline_ms: u64,
    /// True once the user clicked Authorize on the card.
    pub user_clicked: bool,
    /// `message_id` of the card, once sent.
    pub card_message_id: Option<String>,
    /// Device-flow data, once the device authorization was granted.
    pub device: Option<DeviceProgress>,
    /// Code-flow data (boxed: most sessions use the device flow and keep a null pointer).
    pub code_flow: Option<Box<CodeFlowProgress>>,
    /// When the next device poll is due (kept so a restart resumes the cadence).
    pub next_poll_at_ms: Option<u64>,
    /// Language of this session's cards and toasts, when the caller named one; `None`
    /// uses the configured default. The platform tells no user's locale before the user
    /// authorized (neither the card callback nor any API this app may call with a tenant
    /// token carries it), so it only comes from the authorization request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<CardLocale>,
    /// The API call(s) that asked for this authorization (`GET /open-apis/…`, ids
    /// masked), when the OpenAPI proxy started it on a missing scope (99991679); the card
    /// names them. `None` for authorizations asked for directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl SessionRecord {
    /// A new record in state `created`. `code_flow` must be given for the
    /// authorization-code flow (the caller generates `state` and the verifier).
    pub fn new(
        session_id: String,
        open_id: String,
        scopes: impl Into<Arc<[String]>>,
        code_flow: Option<CodeFlowProgress>,
        now_ms: u64,
        timeout_ms: u64,
    ) -> SessionRecord {
        SessionRecord {
            session_id,
            open_id,
            scopes: scopes.into(),
            flow: if code_flow.is_some() {
                AuthFlow::AuthorizationCode
            } else {
                AuthFlow::Device
            },
            state: SessionState::Created,
            reason: None,
            platform_code: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            user_clicked: false,
            card_message_id: None,
            device: None,
            code_flow: code_flow.map(Box::new),
            next_poll_at_ms: None,
            locale: None,
            requested_by: None,
        }
    }
}

/// Serde of a shared list: a JSON array.
mod shared_list {
    use super::*;

    pub(super) fn serialize<S: Serializer>(list: &Arc<[String]>, s: S) -> Result<S::Ok, S::Error> {
        list.as_ref().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[String]>, D::Error> {
        Vec::<String>::deserialize(d).map(Into::into)
    }
}

/// What the user clicked on the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The Authorize button (reported when the platform delivers its callback).
    Authorize,
    /// The Decline button.
    Decline,
}

/// The answer of one device-code poll (`lark-openapi-auth.md` §2.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollAnswer {
    /// `authorization_pending`: keep polling.
    Pending,
    /// `slow_down`: keep polling, 5 s slower.
    SlowDown,
    /// `access_denied`: the user declined on the authorization page.
    Denied,
    /// `expired_token`: the device code expired.
    Expired,
    /// A retryable failure (network, 5xx, 20050, rate limit): poll again later.
    RetryableError,
    /// A final refusal with the platform's code.
    Refused {
        /// Platform `code`, if any.
        code: Option<i64>,
    },
}

/// An input to [`step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Start the session (new, state `created`).
    Begin,
    /// The service restarted and reloaded this non-terminal record.
    Resumed,
    /// The device authorization was granted.
    DeviceAuthorizationGranted {
        /// The device code (secret).
        device_code: Secret<String>,
        /// The page to open.
        verification_uri_complete: String,
        /// Poll interval, seconds.
        interval_secs: u64,
        /// Lifetime of the device code, seconds.
        expires_in_secs: u64,
    },
    /// The device authorization was refused.
    DeviceAuthorizationFailed {
        /// Platform `code`, if any.
        code: Option<i64>,
    },
    /// The card was delivered.
    CardDelivered {
        /// Its `message_id`.
        message_id: String,
    },
    /// The card could not be sent.
    CardFailed {
        /// Platform `code`, if any.
        code: Option<i64>,
    },
    /// A card button was clicked (`card.action.trigger`).
    Clicked {
        /// `operator.open_id` of the click.
        operator_open_id: String,
        /// Which button.
        choice: Choice,
    },
    /// A timer armed by [`Action::WakeAt`] fired.
    Wake,
    /// The answer of a device-code poll.
    Polled(PollAnswer),
    /// The authorization-code redirect arrived with this `code` (its `state` matched).
    CodeReceived {
        /// The authorization code (secret).
        code: Secret<String>,
    },
    /// A token was issued (device poll or code exchange); the actor holds it.
    TokenIssued,
    /// The code exchange was refused.
    ExchangeRefused {
        /// Platform `code`, if any.
        code: Option<i64>,
    },
    /// `user_info` with the new token answered this `open_id`.
    IdentityChecked {
        /// The token owner's `open_id`.
        open_id: String,
    },
    /// `user_info` failed.
    IdentityCheckFailed {
        /// Platform `code`, if any.
        code: Option<i64>,
    },
    /// The vault stored the grant (flushed).
    GrantStored,
    /// The vault could not store the grant.
    GrantStoreFailed,
    /// The user refused on the authorization page (code flow redirect with
    /// `error=access_denied`, `lark-openapi-auth.md` §1.2).
    AuthorizationDenied,
}

/// Which card to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardKind {
    /// Authorize / Decline buttons.
    Authorize,
    /// Final: authorized.
    Authorized,
    /// Final: declined.
    Declined,
    /// Final: expired.
    Expired,
    /// Final: failed (with the reason).
    Failed,
}

/// The toast answered to a click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickToast {
    /// "Opening the authorization page" (the user clicked Authorize).
    Opening,
    /// "Declined".
    Declined,
    /// "This authorization is for someone else": the clicker is not the session's user.
    NotYours,
    /// "Already finished": a click on a terminal session.
    AlreadyFinished(SessionState),
}

/// What the actor must do, in order, after persisting the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Request a device authorization for the record's scopes.
    RequestDeviceAuthorization,
    /// Send (or, for a final card, update) the card to the user. Sending uses the
    /// `session_id` as the idempotency `uuid`, so a resend after a crash is harmless.
    ShowCard(CardKind),
    /// Answer the click being handled with this toast.
    AnswerClick(ClickToast),
    /// Arm a timer that delivers [`Input::Wake`] at this unix-ms time (replacing any).
    WakeAt(u64),
    /// Poll the token endpoint with the device code (through the shared pacer).
    PollDeviceToken,
    /// Exchange the authorization code (with the record's `code_verifier`).
    ExchangeCode(Secret<String>),
    /// Call `user_info` with the token held in memory.
    CheckIdentity,
    /// Hand the token pair and identity to the vault.
    StoreGrant,
    /// Drop the token held in memory (wrong user or failure).
    DiscardToken,
}

/// One transition. Inputs that do not apply to the current state leave the record
/// unchanged and produce no action (except clicks, which are always answered).
pub fn step(record: &SessionRecord, input: Input, now_ms: u64) -> (SessionRecord, Vec<Action>) {
    step_with(record, input, now_ms, &Cadence::default())
}

/// [`step`] with an explicit poll [`Cadence`].
pub fn step_with(
    record: &SessionRecord,
    input: Input,
    now_ms: u64,
    cadence: &Cadence,
) -> (SessionRecord, Vec<Action>) {
    let mut next = record.clone();
    let mut actions = Vec::new();
    let state = record.state;

    if let Input::Clicked {
        operator_open_id,
        choice,
    } = &input
    {
        if *operator_open_id != record.open_id {
            actions.push(Action::AnswerClick(ClickToast::NotYours));
            return (next, actions);
        }
        if state.is_terminal() {
            actions.push(Action::AnswerClick(ClickToast::AlreadyFinished(state)));
            return (next, actions);
        }
        match choice {
            Choice::Decline => {
                actions.push(Action::AnswerClick(ClickToast::Declined));
                finish(
                    &mut next,
                    &mut actions,
                    SessionState::Denied,
                    None,
                    None,
                    now_ms,
                );
            }
            Choice::Authorize => {
                actions.push(Action::AnswerClick(ClickToast::Opening));
                next.user_clicked = true;
                if matches!(state, SessionState::CardSent | SessionState::AwaitingUser) {
                    next.state = SessionState::AwaitingUser;
                    next.updated_at_ms = now_ms;
                    if record.device.is_some() {
                        // Poll at the server's interval from now on. When no poll is
                        // scheduled one is in flight: its answer arms the next at the new
                        // cadence (a second poll in parallel could spend the device code).
                        let at = now_ms + poll_interval_ms(&next, cadence);
                        if next.next_poll_at_ms.is_some_and(|t| t > at) {
                            next.next_poll_at_ms = Some(at);
                            actions.push(Action::WakeAt(at));
                        }
                    }
                }
            }
        }
        return (next, actions);
    }

    // A late send_card answer (the redirect overtook it): keep the id so the final card
    // can replace it, and show the final card now if the session already ended.
    if let Input::CardDelivered { message_id } = &input
        && record.card_message_id.is_none()
        && (state.is_terminal() || state == SessionState::Exchanging)
    {
        next.card_message_id = Some(message_id.clone());
        if state.is_terminal() {
            actions.push(Action::ShowCard(final_card_kind(state)));
        }
        return (next, actions);
    }

    if state.is_terminal() {
        return (next, actions);
    }

    // The deadline applies to every non-terminal state.
    if now_ms >= record.deadline_ms && !matches!(input, Input::GrantStored) {
        if state == SessionState::Exchanging {
            actions.push(Action::DiscardToken);
        }
        finish(
            &mut next,
            &mut actions,
            SessionState::Expired,
            None,
            None,
            now_ms,
        );
        return (next, actions);
    }

    match (state, input) {
        (SessionState::Created, Input::Begin | Input::Resumed) => match record.flow {
            AuthFlow::Device => match &record.device {
                // Resumed after the device authorization was granted: (re)send the card;
                // the idempotency uuid prevents a duplicate.
                Some(_) => actions.push(Action::ShowCard(CardKind::Authorize)),
                None => actions.push(Action::RequestDeviceAuthorization),
            },
            AuthFlow::AuthorizationCode => actions.push(Action::ShowCard(CardKind::Authorize)),
        },
        (
            SessionState::Created,
            Input::DeviceAuthorizationGranted {
                device_code,
                verification_uri_complete,
                interval_secs,
                expires_in_secs,
            },
        ) => {
            let expires_at_ms = now_ms.saturating_add(expires_in_secs.saturating_mul(1000));
            next.device = Some(DeviceProgress {
                device_code,
                verification_uri_complete,
                interval_secs: interval_secs.clamp(1, MAX_POLL_INTERVAL_SECS),
                expires_at_ms,
            });
            // The session cannot outlive its device code.
            next.deadline_ms = next.deadline_ms.min(expires_at_ms);
            next.updated_at_ms = now_ms;
            actions.push(Action::ShowCard(CardKind::Authorize));
        }
        (SessionState::Created, Input::DeviceAuthorizationFailed { code }) => {
            finish_failed(
                &mut next,
                &mut actions,
                FailureReason::DeviceAuthorizationFailed,
                code,
                now_ms,
            );
        }
        (SessionState::Created, Input::CardDelivered { message_id }) => {
            next.card_message_id = Some(message_id);
            if let Some(device) = next.device.as_mut() {
                device.verification_uri_complete = String::new();
            }
            next.state = if record.user_clicked {
                SessionState::AwaitingUser
            } else {
                SessionState::CardSent
            };
            next.updated_at_ms = now_ms;
            actions.push(Action::WakeAt(next.deadline_ms));
            if next.device.is_some() {
                let at = now_ms + poll_interval_ms(&next, cadence);
                next.next_poll_at_ms = Some(at);
                actions.push(Action::WakeAt(at));
            }
        }
        (SessionState::Created, Input::CardFailed { code }) => {
            // No card reached the user, so there is no card to update.
            next.state = SessionState::Failed;
            next.reason = Some(FailureReason::CardNotSent);
            next.platform_code = code;
            next.updated_at_ms = now_ms;
        }
        (SessionState::CardSent | SessionState::AwaitingUser, Input::Resumed) => {
            actions.push(Action::WakeAt(record.deadline_ms));
            if record.device.is_some() {
                let at = record.next_poll_at_ms.unwrap_or(now_ms).max(now_ms);
                next.next_poll_at_ms = Some(at);
                actions.push(Action::WakeAt(at));
            }
        }
        (SessionState::CardSent | SessionState::AwaitingUser, Input::Wake)
            if record.device.is_some() && record.next_poll_at_ms.is_some_and(|t| now_ms >= t) =>
        {
            next.next_poll_at_ms = None;
            actions.push(Action::PollDeviceToken);
        }
        (SessionState::CardSent | SessionState::AwaitingUser, Input::Polled(answer)) => {
            match answer {
                PollAnswer::Pending | PollAnswer::SlowDown | PollAnswer::RetryableError => {
                    if let Some(device) = next.device.as_mut()
                        && answer == PollAnswer::SlowDown
                    {
                        device.interval_secs = (device.interval_secs + SLOW_DOWN_STEP_SECS)
                            .min(MAX_POLL_INTERVAL_SECS);
                    }
                    if answer == PollAnswer::Pending && state == SessionState::CardSent {
                        next.state = SessionState::AwaitingUser;
                        next.updated_at_ms = now_ms;
                    }
                    let delay = if answer == PollAnswer::RetryableError {
                        cadence.retry_ms
                    } else {
                        poll_interval_ms(&next, cadence)
                    };
                    let at = now_ms + delay;
                    next.next_poll_at_ms = Some(at);
                    actions.push(Action::WakeAt(at));
                }
                PollAnswer::Denied => {
                    finish(
                        &mut next,
                        &mut actions,
                        SessionState::Denied,
                        None,
                        None,
                        now_ms,
                    );
                }
                PollAnswer::Expired => {
                    finish(
                        &mut next,
                        &mut actions,
                        SessionState::Expired,
                        None,
                        None,
                        now_ms,
                    );
                }
                PollAnswer::Refused { code } => {
                    finish_failed(
                        &mut next,
                        &mut actions,
                        FailureReason::ExchangeFailed,
                        code,
                        now_ms,
                    );
                }
            }
        }
        // The redirect may overtake the send_card answer: the card evidently arrived.
        (
            SessionState::Created | SessionState::CardSent | SessionState::AwaitingUser,
            Input::CodeReceived { code },
        ) if record.flow == AuthFlow::AuthorizationCode => {
            next.state = SessionState::Exchanging;
            next.updated_at_ms = now_ms;
            actions.push(Action::ExchangeCode(code));
        }
        (
            SessionState::Created | SessionState::CardSent | SessionState::AwaitingUser,
            Input::AuthorizationDenied,
        ) => {
            finish(
                &mut next,
                &mut actions,
                SessionState::Denied,
                None,
                None,
                now_ms,
            );
        }
        (SessionState::CardSent | SessionState::AwaitingUser, Input::TokenIssued)
            if record.flow == AuthFlow::Device =>
        {
            next.state = SessionState::Exchanging;
            next.next_poll_at_ms = None;
            next.updated_at_ms = now_ms;
            actions.push(Action::CheckIdentity);
        }
        (SessionState::Exchanging, Input::TokenIssued) => actions.push(Action::CheckIdentity),
        (SessionState::Exchanging, Input::ExchangeRefused { code }) => {
            finish_failed(
                &mut next,
                &mut actions,
                FailureReason::ExchangeFailed,
                code,
                now_ms,
            );
        }
        (SessionState::Exchanging, Input::IdentityChecked { open_id }) => {
            if open_id == record.open_id {
                actions.push(Action::StoreGrant);
            } else {
                actions.push(Action::DiscardToken);
                finish_failed(
                    &mut next,
                    &mut actions,
                    FailureReason::WrongUser,
                    None,
                    now_ms,
                );
            }
        }
        (SessionState::Exchanging, Input::IdentityCheckFailed { code }) => {
            actions.push(Action::DiscardToken);
            finish_failed(
                &mut next,
                &mut actions,
                FailureReason::IdentityCheckFailed,
                code,
                now_ms,
            );
        }
        (SessionState::Exchanging, Input::GrantStored) => {
            finish(
                &mut next,
                &mut actions,
                SessionState::Authorized,
                None,
                None,
                now_ms,
            );
        }
        (SessionState::Exchanging, Input::GrantStoreFailed) => {
            actions.push(Action::DiscardToken);
            finish_failed(
                &mut next,
                &mut actions,
                FailureReason::VaultFailed,
                None,
                now_ms,
            );
        }
        (SessionState::Exchanging, Input::Resumed) => {
            // The token lived only in memory and is gone.
            finish_failed(
                &mut next,
                &mut actions,
                FailureReason::Interrupted,
                None,
                now_ms,
            );
        }
        _ => {}
    }
    (next, actions)
}

/// The poll interval in force: the server's while the user has clicked Authorize (or the
/// platform reported the code pending), a slower cadence before.
fn poll_interval_ms(record: &SessionRecord, cadence: &Cadence) -> u64 {
    let Some(device) = &record.device else {
        return cadence.retry_ms;
    };
    let server_ms = device.interval_secs * 1000;
    if record.user_clicked || record.state == SessionState::AwaitingUser {
        server_ms
    } else {
        (server_ms * cadence.idle_factor).max(cadence.idle_min_ms)
    }
}

fn finish(
    next: &mut SessionRecord,
    actions: &mut Vec<Action>,
    state: SessionState,
    reason: Option<FailureReason>,
    code: Option<i64>,
    now_ms: u64,
) {
    next.state = state;
    next.reason = reason;
    next.platform_code = code;
    next.updated_at_ms = now_ms;
    next.next_poll_at_ms = None;
    if next.card_message_id.is_some() {
        actions.push(Action::ShowCard(final_card_kind(state)));
    }
}

fn final_card_kind(state: SessionState) -> CardKind {
    match state {
        SessionState::Authorized => CardKind::Authorized,
        SessionState::Denied => CardKind::Declined,
        SessionState::Expired => CardKind::Expired,
        _ => CardKind::Failed,
    }
}

fn finish_failed(
    next: &mut SessionRecord,
    actions: &mut Vec<Action>,
    reason: FailureReason,
    code: Option<i64>,
    now_ms: u64,
) {
    finish(
        next,
        actions,
        SessionState::Failed,
        Some(reason),
        code,
        now_ms,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_767_225_600_000;
    const USER: &str = "ou_user";

    fn new_device() -> SessionRecord {
        SessionRecord::new(
            "sess_1".into(),
            USER.into(),
            vec!["offline_access".into()],
            None,
            T0,
            600_000,
        )
    }

    fn granted(interval_secs: u64) -> Input {
        Input::DeviceAuthorizationGranted {
            device_code: Secret::new("device-code".into()),
            verification_uri_complete: "https://accounts.example.test/verify?code=ABCD".into(),
            interval_secs,
            expires_in_secs: 240,
        }
    }

    /// Runs inputs in order at the given times, returning the final record and every
    /// action.
    fn run(
        mut record: SessionRecord,
        inputs: Vec<(u64, Input)>,
    ) -> (SessionRecord, Vec<Vec<Action>>) {
        let mut all = Vec::new();
        for (at, input) in inputs {
            let (next, actions) = step(&record, input, at);
            record = next;
            all.push(actions);
        }
        (record, all)
    }

    fn click(open_id: &str, choice: Choice) -> Input {
        Input::Clicked {
            operator_open_id: open_id.into(),
            choice,
        }
    }

    #[test]
    fn device_flow_happy_path_goes_through_every_state() {
        let (r, actions) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0 + 100, granted(5)),
                (
                    T0 + 200,
                    Input::CardDelivered {
                        message_id: "om_1".into(),
                    },
                ),
                (T0 + 1_000, click(USER, Choice::Authorize)),
            ],
        );
        assert_eq!(actions[0], vec![Action::RequestDeviceAuthorization]);
        assert_eq!(actions[1], vec![Action::ShowCard(CardKind::Authorize)]);
        // Deadline capped by the device code's 240 s lifetime.
        assert_eq!(r.deadline_ms, T0 + 100 + 240_000);
        assert_eq!(
            r.device.as_ref().unwrap().verification_uri_complete,
            "",
            "the user code is forgotten once the card carries it"
        );
        assert_eq!(
            actions[2],
            vec![
                Action::WakeAt(T0 + 100 + 240_000),
                Action::WakeAt(T0 + 200 + 15_000)
            ],
            "before the click: the slow cadence (3 x 5 s, at least 15 s)"
        );
        assert_eq!(
            actions[3],
            vec![
                Action::AnswerClick(ClickToast::Opening),
                Action::WakeAt(T0 + 1_000 + 5_000)
            ],
            "after the click: the server's interval"
        );
        assert_eq!(r.state, SessionState::AwaitingUser);

        let (r, actions) = run(
            r,
            vec![
                (T0 + 6_000, Input::Wake),
                (T0 + 6_100, Input::Polled(PollAnswer::Pending)),
                (T0 + 11_100, Input::Wake),
                (T0 + 11_200, Input::TokenIssued),
                (
                    T0 + 11_300,
                    Input::IdentityChecked {
                        open_id: USER.into(),
                    },
                ),
                (T0 + 11_400, Input::GrantStored),
            ],
        );
        assert_eq!(actions[0], vec![Action::PollDeviceToken]);
        assert_eq!(actions[1], vec![Action::WakeAt(T0 + 6_100 + 5_000)]);
        assert_eq!(actions[2], vec![Action::PollDeviceToken]);
        assert_eq!(actions[3], vec![Action::CheckIdentity]);
        assert_eq!(actions[4], vec![Action::StoreGrant]);
        assert_eq!(actions[5], vec![Action::ShowCard(CardKind::Authorized)]);
        assert_eq!(r.state, SessionState::Authorized);
        assert_eq!(r.updated_at_ms, T0 + 11_400);
    }

    #[test]
    fn a_click_while_a_poll_is_in_flight_does_not_start_a_second_poll() {
        let (r, _) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0 + 15_000, Input::Wake),
            ],
        );
        assert_eq!(r.next_poll_at_ms, None, "poll in flight");
        let (r, actions) = step(&r, click(USER, Choice::Authorize), T0 + 15_100);
        assert_eq!(actions, vec![Action::AnswerClick(ClickToast::Opening)]);
        let (_, actions) = step(&r, Input::Polled(PollAnswer::Pending), T0 + 15_200);
        assert_eq!(
            actions,
            vec![Action::WakeAt(T0 + 15_200 + 5_000)],
            "the answer arms the next poll at the server's interval"
        );
    }

    #[test]
    fn slow_down_adds_five_seconds_each_time() {
        let (r, actions) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0, click(USER, Choice::Authorize)),
                (T0 + 5_000, Input::Wake),
                (T0 + 5_000, Input::Polled(PollAnswer::SlowDown)),
                (T0 + 15_000, Input::Wake),
                (T0 + 15_000, Input::Polled(PollAnswer::SlowDown)),
            ],
        );
        assert_eq!(actions[5], vec![Action::WakeAt(T0 + 5_000 + 10_000)]);
        assert_eq!(actions[7], vec![Action::WakeAt(T0 + 15_000 + 15_000)]);
        assert_eq!(r.device.unwrap().interval_secs, 15);
    }

    #[test]
    fn a_wake_before_the_poll_is_due_does_not_poll() {
        let (_, actions) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0 + 1_000, Input::Wake),
            ],
        );
        assert!(actions[3].is_empty());
    }

    #[test]
    fn someone_else_clicking_changes_nothing() {
        let (r0, _) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
            ],
        );
        for choice in [Choice::Authorize, Choice::Decline] {
            let (r, actions) = step(&r0, click("ou_intruder", choice), T0 + 10);
            assert_eq!(actions, vec![Action::AnswerClick(ClickToast::NotYours)]);
            assert_eq!(r, r0);
        }
    }

    #[test]
    fn decline_by_the_user_ends_denied_and_a_second_click_is_answered_not_replayed() {
        let (r, actions) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0 + 10, click(USER, Choice::Decline)),
                (T0 + 20, click(USER, Choice::Decline)),
            ],
        );
        assert_eq!(
            actions[3],
            vec![
                Action::AnswerClick(ClickToast::Declined),
                Action::ShowCard(CardKind::Declined)
            ]
        );
        assert_eq!(
            actions[4],
            vec![Action::AnswerClick(ClickToast::AlreadyFinished(
                SessionState::Denied
            ))]
        );
        assert_eq!(r.state, SessionState::Denied);
        assert_eq!(
            r.updated_at_ms,
            T0 + 10,
            "the replayed click made no transition"
        );
    }

    #[test]
    fn a_forwarded_link_fails_with_wrong_user_and_the_token_is_discarded() {
        let (r, actions) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0 + 20_000, Input::Wake),
                (T0 + 20_100, Input::TokenIssued),
                (
                    T0 + 20_200,
                    Input::IdentityChecked {
                        open_id: "ou_someone_else".into(),
                    },
                ),
            ],
        );
        assert_eq!(
            actions[5],
            vec![Action::DiscardToken, Action::ShowCard(CardKind::Failed)]
        );
        assert_eq!(r.state, SessionState::Failed);
        assert_eq!(r.reason, Some(FailureReason::WrongUser));
    }

    #[test]
    fn the_deadline_expires_any_non_terminal_state() {
        let (r, _) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
            ],
        );
        let (expired, actions) = step(&r, Input::Wake, r.deadline_ms);
        assert_eq!(expired.state, SessionState::Expired);
        assert_eq!(actions, vec![Action::ShowCard(CardKind::Expired)]);
        let (denied, _) = step(&r, Input::Polled(PollAnswer::Denied), T0 + 1);
        assert_eq!(denied.state, SessionState::Denied);
        let (expired, _) = step(&r, Input::Polled(PollAnswer::Expired), T0 + 1);
        assert_eq!(expired.state, SessionState::Expired);
    }

    #[test]
    fn resume_keeps_the_remaining_time_and_the_poll_cadence() {
        let (r, _) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
            ],
        );
        let due = r.next_poll_at_ms.unwrap();
        let (resumed, actions) = step(&r, Input::Resumed, T0 + 3_000);
        assert_eq!(
            actions,
            vec![Action::WakeAt(r.deadline_ms), Action::WakeAt(due)],
            "the deadline does not move and the pending poll keeps its time"
        );
        assert_eq!(resumed.deadline_ms, r.deadline_ms);
        let (_, late) = step(&r, Input::Resumed, due + 60_000);
        assert_eq!(
            late,
            vec![Action::WakeAt(r.deadline_ms), Action::WakeAt(due + 60_000)]
        );
    }

    #[test]
    fn a_restart_while_exchanging_fails_as_interrupted() {
        let (r, _) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, granted(5)),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0 + 20_000, Input::Wake),
                (T0 + 20_100, Input::TokenIssued),
            ],
        );
        assert_eq!(r.state, SessionState::Exchanging);
        let (r, actions) = step(&r, Input::Resumed, T0 + 30_000);
        assert_eq!(r.reason, Some(FailureReason::Interrupted));
        assert_eq!(actions, vec![Action::ShowCard(CardKind::Failed)]);
    }

    #[test]
    fn code_flow_exchanges_the_code_then_checks_identity() {
        let record = SessionRecord::new(
            "sess_2".into(),
            USER.into(),
            vec!["offline_access".into()],
            Some(CodeFlowProgress {
                oauth_state: "st".into(),
                code_verifier: Secret::new("verifier".into()),
            }),
            T0,
            600_000,
        );
        let code = Secret::new("auth-code".to_string());
        let (r, actions) = run(
            record,
            vec![
                (T0, Input::Begin),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0 + 5, Input::CodeReceived { code: code.clone() }),
                (T0 + 6, Input::TokenIssued),
                (
                    T0 + 7,
                    Input::IdentityChecked {
                        open_id: USER.into(),
                    },
                ),
                (T0 + 8, Input::GrantStored),
            ],
        );
        assert_eq!(actions[0], vec![Action::ShowCard(CardKind::Authorize)]);
        assert_eq!(actions[1], vec![Action::WakeAt(T0 + 600_000)], "no polling");
        assert_eq!(actions[2], vec![Action::ExchangeCode(code)]);
        assert_eq!(actions[3], vec![Action::CheckIdentity]);
        assert_eq!(r.state, SessionState::Authorized);
    }

    #[test]
    fn a_refusal_on_the_authorization_page_ends_denied_and_cadence_is_tunable() {
        let record = SessionRecord::new(
            "sess_3".into(),
            USER.into(),
            vec!["offline_access".into()],
            Some(CodeFlowProgress {
                oauth_state: "st".into(),
                code_verifier: Secret::new("verifier".into()),
            }),
            T0,
            600_000,
        );
        let (r, actions) = run(
            record,
            vec![
                (T0, Input::Begin),
                (
                    T0,
                    Input::CardDelivered {
                        message_id: "om".into(),
                    },
                ),
                (T0 + 5, Input::AuthorizationDenied),
            ],
        );
        assert_eq!(r.state, SessionState::Denied);
        assert_eq!(actions[2], vec![Action::ShowCard(CardKind::Declined)]);

        let fast = Cadence {
            idle_factor: 1,
            idle_min_ms: 0,
            retry_ms: 100,
        };
        let (r, _) = run(new_device(), vec![(T0, Input::Begin), (T0, granted(1))]);
        let (_, actions) = step_with(
            &r,
            Input::CardDelivered {
                message_id: "om".into(),
            },
            T0,
            &fast,
        );
        assert_eq!(
            actions[1],
            Action::WakeAt(T0 + 1_000),
            "idle = server interval"
        );
    }

    #[test]
    fn failures_record_the_reason_and_the_platform_code() {
        let (r, actions) = run(
            new_device(),
            vec![
                (T0, Input::Begin),
                (T0, Input::DeviceAuthorizationFailed { code: Some(20001) }),
            ],
        );
        assert_eq!(r.state, SessionState::Failed);
        assert_eq!(r.reason, Some(FailureReason::DeviceAuthorizationFailed));
        assert_eq!(r.platform_code, Some(20001));
        assert!(actions[1].is_empty(), "no card was sent, so none to update");
    }

    #[test]
    fn the_record_debug_never_shows_the_device_code() {
        let (r, _) = run(new_device(), vec![(T0, Input::Begin), (T0, granted(5))]);
        assert!(!format!("{r:?}").contains("device-code"));
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains("device-code"),
            "serialized for logs: redacted"
        );
    }
}
