//! The sandbox's OpenAPI side: the HTTP endpoints of `lark-openapi-auth.md` (§ numbers
//! below), served by the same App as the long-connection routes, with simulated users.
//!
//! Routes (all on the sandbox's one base URL, which tests use as both `open_base_url` and
//! `accounts_base_url`):
//!
//! - `POST /open-apis/auth/v3/tenant_access_token/internal` (§3.1): the reuse rule (same
//!   token while ≥ [`OpenApiSandboxConfig::tenant_token_reuse_margin`] remains);
//! - `POST /oauth/v1/device_authorization` (§2.6): HTTP Basic app credentials, form body;
//! - `POST /open-apis/authen/v2/oauth/token` (§2): `authorization_code` (single use,
//!   5-minute codes, PKCE, `redirect_uri` match), `refresh_token` (rotation, single use,
//!   reuse → 20073 counted as a violation, revoked → 20064, expired → 20037) and the
//!   device-code grant (pending / slow_down / denied / expired);
//! - `GET /open-apis/authen/v1/user_info` (§6), user token checked;
//! - `POST /open-apis/im/v1/messages`, `PATCH /open-apis/im/v1/messages/{id}`,
//!   `POST /open-apis/interactive/v1/card/update` (§4), tenant token checked, cards parsed
//!   and recorded;
//! - a few plain OpenAPI routes for the OpenAPI proxy (see [`apis`]): one that needs a user
//!   scope (99991679 with `permission_violations` without it), a streamed download of any
//!   size, an upload that reports what it received, and a tenant-token-only route; every
//!   request to them is recorded ([`Sandbox::api_requests`]).
//!
//! Time: every lifetime is measured on a sandbox clock that [`Sandbox::advance_time`] moves
//! forward, so expiry is tested without sleeping. Faults ([`OpenApiFault`]) queue per
//! [`OpenApiRoute`] and are consumed one per request.
//!
//! The authorize page is not an HTTP route: a simulated user "visits" an authorize URL
//! with [`Sandbox::authorize`] and gets the redirect URL (with `code` and `state`) back.

pub mod apis;
mod im;
mod tokens;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder, web};

use super::{Sandbox, Shared, WaitTimeout};
use crate::openapi::oauth::{AUTHORIZE_PATH, s256_challenge};
use crate::secret::Secret;

/// Registers the OpenAPI routes on the sandbox App.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    tokens::routes(cfg);
    im::routes(cfg);
    apis::routes(cfg);
}

/// A simulated user of the sandbox tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUser {
    /// `ou_…`.
    pub open_id: String,
    /// `on_…`.
    pub union_id: String,
    /// Display name.
    pub name: String,
}

impl SandboxUser {
    /// A user with the given ids and name.
    pub fn new(open_id: &str, union_id: &str, name: &str) -> SandboxUser {
        SandboxUser {
            open_id: open_id.into(),
            union_id: union_id.into(),
            name: name.into(),
        }
    }
}

/// Settings of the OpenAPI side. Durations are on the sandbox clock; defaults are the
/// documented values.
#[derive(Debug, Clone)]
pub struct OpenApiSandboxConfig {
    /// Lifetime of a new tenant_access_token (`expire`, §3.1). Default 7200 s.
    pub tenant_token_lifetime: Duration,
    /// While at least this remains, the tenant endpoint returns the same token with
    /// `expire` = remaining seconds (§3.1). Default 1800 s.
    pub tenant_token_reuse_margin: Duration,
    /// `expires_in` of user access tokens (§2.3). Default 7200 s.
    pub access_token_lifetime: Duration,
    /// `refresh_token_expires_in` (§2.3). Default 604800 s (7 days).
    pub refresh_token_lifetime: Duration,
    /// Refreshing stops this long after the user authorized (§2.4). Default 365 days.
    pub grant_max_age: Duration,
    /// Authorization code lifetime (§1.2). Default 300 s.
    pub code_lifetime: Duration,
    /// Device code `expires_in` (§2.6). Default 240 s.
    pub device_code_lifetime: Duration,
    /// Device polling `interval` (§2.6). Default 5 s.
    pub device_poll_interval: Duration,
    /// Registered redirect URLs (§1.3); exact string match (the real rule is UNCONFIRMED).
    /// Default `["http://127.0.0.1/oauth/callback"]`.
    pub redirect_uris: Vec<String>,
    /// The console's "refresh user_access_token" switch (§2.4); off → 20074. Default on.
    pub refresh_enabled: bool,
    /// The tenant's users. Default: `ou_test_user_1` and `ou_test_user_2` (fixtures).
    pub users: Vec<SandboxUser>,
    /// `tenant_key` of the tenant. Default `tk_test_tenant_0001`.
    pub tenant_key: String,
    /// Send every `code` as a numeric string (`"code": "0"`), as the Lark EN pages show
    /// (§2.3). Default false (numbers).
    pub string_codes: bool,
    /// Every `ou_…` open_id is a user of the tenant (named after its id), besides
    /// [`users`](Self::users): for benches with many users. Default false.
    pub open_tenant: bool,
    /// Keep every sent card (parsed) for [`Sandbox::sent_cards`], PATCH and delayed
    /// updates. Default true. A bench sending 100,000 cards turns it off: sends are then
    /// checked as usual but only counted ([`Sandbox::sent_card_count`]) and their uuid
    /// remembered, and PATCH / delayed updates of those messages are refused as unknown.
    pub keep_cards: bool,
}

impl OpenApiSandboxConfig {
    /// The tenant user `open_id`, if there is one (see [`open_tenant`](Self::open_tenant)).
    pub fn user(&self, open_id: &str) -> Option<SandboxUser> {
        if let Some(u) = self.users.iter().find(|u| u.open_id == open_id) {
            return Some(u.clone());
        }
        let rest = open_id.strip_prefix("ou_").filter(|_| self.open_tenant)?;
        Some(SandboxUser::new(
            open_id,
            &format!("on_{rest}"),
            &format!("User {rest}"),
        ))
    }
}

impl Default for OpenApiSandboxConfig {
    fn default() -> Self {
        OpenApiSandboxConfig {
            tenant_token_lifetime: Duration::from_secs(7200),
            tenant_token_reuse_margin: Duration::from_secs(1800),
            access_token_lifetime: Duration::from_secs(7200),
            refresh_token_lifetime: Duration::from_secs(604_800),
            grant_max_age: Duration::from_secs(365 * 86_400),
            code_lifetime: Duration::from_secs(300),
            device_code_lifetime: Duration::from_secs(240),
            device_poll_interval: Duration::from_secs(5),
            redirect_uris: vec![DEFAULT_REDIRECT_URI.to_string()],
            refresh_enabled: true,
            users: vec![
                SandboxUser::new("ou_test_user_1", "on_test_user_1", "Test User One"),
                SandboxUser::new("ou_test_user_2", "on_test_user_2", "Test User Two"),
            ],
            tenant_key: "tk_test_tenant_0001".into(),
            string_codes: false,
            open_tenant: false,
            keep_cards: true,
        }
    }
}

/// The redirect URL registered by default.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1/oauth/callback";

/// Which endpoint a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenApiRoute {
    /// `POST /open-apis/auth/v3/tenant_access_token/internal`.
    TenantToken,
    /// `POST /open-apis/authen/v2/oauth/token` (every grant).
    UserToken,
    /// `POST /oauth/v1/device_authorization`.
    DeviceAuthorization,
    /// `GET /open-apis/authen/v1/user_info`.
    UserInfo,
    /// `POST /open-apis/im/v1/messages`.
    SendMessage,
    /// `PATCH /open-apis/im/v1/messages/{id}`.
    PatchMessage,
    /// `POST /open-apis/interactive/v1/card/update`.
    CardUpdate,
    /// The plain OpenAPI routes of [`apis`] (task list, download, upload, tenant query).
    Api,
}

/// A failure injected into the next request of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenApiFault {
    /// HTTP 500, `code` 20050, `error` `server_error` (retryable, §2.5). Nothing is done.
    ServerError,
    /// HTTP 503, `code` 20072, `error` `temporarily_unavailable` (retryable). Nothing done.
    TemporarilyUnavailable,
    /// HTTP 429, `code` 99991400, headers `x-ogw-ratelimit-limit: 50` and
    /// `x-ogw-ratelimit-reset: reset_secs` (§7). Nothing is done.
    RateLimited {
        /// Seconds until the limit resets.
        reset_secs: u64,
    },
    /// Rate limiting as older APIs answer it (§7): HTTP **400** with `code` 99991400 and
    /// the same headers as [`RateLimited`](Self::RateLimited). Nothing is done.
    RateLimitedOn400 {
        /// Seconds until the limit resets.
        reset_secs: u64,
    },
    /// This HTTP status with a plain-text (non-JSON) body, as a gateway would answer.
    /// Nothing is done.
    HttpStatus(u16),
    /// The request **is processed** (tokens issued, refresh tokens consumed), then the
    /// answer is held back this long: a slow platform, or a lost answer when the client
    /// gives up first.
    Delay(Duration),
    /// Device-code polls only: answer `slow_down` (RFC 8628 §3.5) as if polled too fast,
    /// adding 5 s to that device code's interval like a real too-fast poll does.
    SlowDown,
    /// HTTP 400 with this platform `code` and its message (§6 general errors: 99991668
    /// invalid user token, 99991677 expired user token, 99991663 invalid tenant token),
    /// whatever token was sent. Nothing is done.
    ApiCode(i64),
}

/// One request to the user token endpoint.
#[derive(Debug, Clone)]
pub struct RecordedTokenRequest {
    /// `grant_type` as sent.
    pub grant_type: Option<String>,
    /// `Content-Type` as sent.
    pub content_type: Option<String>,
    /// The refresh token sent (refresh grant).
    pub refresh_token: Option<Secret<String>>,
    /// The fault applied, if any.
    pub fault: Option<OpenApiFault>,
    /// The `code` answered (0 on success); `None` for device-flow RFC 8628 answers.
    pub code: Option<i64>,
    /// The OAuth `error` answered, if any.
    pub error: Option<String>,
    /// When the request arrived (monotonic clock), to count requests per second.
    pub received_at: std::time::Instant,
}

/// One request to a plain OpenAPI route of the sandbox ([`OpenApiRoute::Api`]), as it
/// arrived.
#[derive(Debug, Clone)]
pub struct RecordedApiRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// Every header as received (names lowercase), the `Authorization` one included.
    pub headers: Vec<(String, String)>,
    /// Body bytes received (uploads).
    pub body_len: u64,
    /// The platform `code` answered (0 on success).
    pub code: i64,
}

impl RecordedApiRequest {
    /// The values of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The token of `Authorization: Bearer …`, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .first()
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

/// A card sent through `POST /im/v1/messages`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SentCard {
    /// The `om_…` id issued.
    pub message_id: String,
    /// `receive_id` (an open_id).
    pub receive_id: String,
    /// The card: `content` parsed from its JSON string.
    pub card: serde_json::Value,
    /// The idempotency key, if sent.
    pub uuid: Option<String>,
}

/// A PATCH of a sent card.
#[derive(Debug, Clone, PartialEq)]
pub struct CardPatch {
    /// The message patched.
    pub message_id: String,
    /// The new card (parsed from `content`).
    pub card: serde_json::Value,
}

/// A delayed card update (§4.3) that was accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayedCardUpdate {
    /// The card-update token used.
    pub token: Secret<String>,
    /// The message the token belongs to.
    pub message_id: String,
    /// The new card object.
    pub card: serde_json::Value,
}

/// Why a simulated user's action could not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserActionError {
    /// The open_id is not one of [`OpenApiSandboxConfig::users`].
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// No device authorization has this user code.
    #[error("unknown user code")]
    UnknownUserCode,
    /// The device code already expired or was redeemed.
    #[error("device code no longer valid")]
    DeviceCodeInvalid,
    /// The authorize page refused the URL (`code` as the page would show it, §1.3:
    /// 20029 illegal redirect_uri; 20048 unknown app; 20001 missing/bad parameter).
    #[error("authorize page error {code}: {reason}")]
    AuthorizePage {
        /// The page's error code.
        code: i64,
        /// What is wrong.
        reason: String,
    },
}

// ----- state ---------------------------------------------------------------------------

pub(crate) struct TenantToken {
    pub(crate) token: String,
    pub(crate) expires_at: Instant,
}

pub(crate) struct AuthCode {
    pub(crate) open_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scope: String,
    /// `(challenge, method)`.
    pub(crate) challenge: Option<(String, String)>,
    pub(crate) issued_at: Instant,
    pub(crate) used: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceDecision {
    Pending,
    Approved(String),
    Denied,
}

pub(crate) struct DeviceGrant {
    pub(crate) user_code: String,
    pub(crate) scope: String,
    pub(crate) expires_at: Instant,
    pub(crate) interval: Duration,
    pub(crate) last_poll: Option<Instant>,
    pub(crate) decision: DeviceDecision,
    pub(crate) redeemed: bool,
}

pub(crate) struct AccessGrant {
    pub(crate) open_id: String,
    /// Space-separated scopes granted with this token.
    pub(crate) scope: String,
    pub(crate) expires_at: Instant,
    pub(crate) revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshState {
    Active,
    Used,
    Revoked,
}

pub(crate) struct RefreshGrant {
    pub(crate) open_id: String,
    pub(crate) scope: String,
    pub(crate) expires_at: Instant,
    pub(crate) authorized_at: Instant,
    pub(crate) state: RefreshState,
}

pub(crate) struct StoredMessage {
    pub(crate) card: serde_json::Value,
    pub(crate) sent_at: Instant,
}

pub(crate) struct CardToken {
    pub(crate) message_id: String,
    pub(crate) issued_at: Instant,
    pub(crate) uses: u32,
}

/// The OpenAPI side's part of the sandbox state.
#[derive(Default)]
pub(crate) struct OpenApiState {
    pub(crate) clock_offset: Duration,
    pub(crate) faults: VecDeque<(OpenApiRoute, OpenApiFault)>,
    pub(crate) next_id: u64,
    pub(crate) tenant_tokens: Vec<TenantToken>,
    pub(crate) tenant_token_requests: usize,
    pub(crate) codes: HashMap<String, AuthCode>,
    pub(crate) devices: HashMap<String, DeviceGrant>,
    pub(crate) access_tokens: HashMap<String, AccessGrant>,
    pub(crate) refresh_tokens: HashMap<String, RefreshGrant>,
    pub(crate) refresh_reuse_violations: usize,
    pub(crate) token_requests: Vec<RecordedTokenRequest>,
    pub(crate) user_info_requests: usize,
    pub(crate) messages: HashMap<String, StoredMessage>,
    pub(crate) uuids: HashMap<String, (String, Instant)>,
    pub(crate) sent_cards: Vec<SentCard>,
    pub(crate) sent_card_count: usize,
    pub(crate) patches: Vec<CardPatch>,
    pub(crate) delayed_updates: Vec<DelayedCardUpdate>,
    pub(crate) card_tokens: HashMap<String, CardToken>,
    pub(crate) api_requests: Vec<RecordedApiRequest>,
    /// While set, downloads stop after their first chunk until permits are added
    /// ([`Sandbox::hold_downloads`]).
    pub(crate) download_hold: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

impl OpenApiState {
    /// The sandbox clock: real time plus [`Sandbox::advance_time`] offsets.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    /// A fresh number for ids and log ids.
    pub(crate) fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Removes and returns the first queued fault of `route`.
    pub(crate) fn take_fault(&mut self, route: OpenApiRoute) -> Option<OpenApiFault> {
        let i = self.faults.iter().position(|(r, _)| *r == route)?;
        self.faults.remove(i).map(|(_, f)| f)
    }
}

/// A random token-ish string: `prefix` + 32 hex digits.
pub(crate) fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A JSON answer with an `x-tt-logid` header.
pub(crate) fn json_answer(shared: &Shared, status: u16, body: serde_json::Value) -> HttpResponse {
    answer_builder(shared, status).json(body)
}

/// A response builder with the status and an `x-tt-logid` header.
pub(crate) fn answer_builder(shared: &Shared, status: u16) -> HttpResponseBuilder {
    let n = shared.lock().openapi.next();
    let mut builder =
        HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST));
    builder.insert_header(("x-tt-logid", format!("sandbox-log-{n:08}")));
    builder
}

/// The answer of a non-delay fault; `token_style` adds OAuth `error` fields (token
/// endpoint and device flow).
pub(crate) fn fault_answer(
    shared: &Shared,
    fault: &OpenApiFault,
    token_style: bool,
) -> Option<HttpResponse> {
    let (status, code, error, text) = match fault {
        OpenApiFault::ServerError => (
            500,
            20_050,
            "server_error",
            "An unexpected server error occurred. Please retry your request.",
        ),
        OpenApiFault::TemporarilyUnavailable => (
            503,
            20_072,
            "temporarily_unavailable",
            "The server is temporarily unavailable. Please retry your request.",
        ),
        OpenApiFault::RateLimited { reset_secs }
        | OpenApiFault::RateLimitedOn400 { reset_secs } => {
            let status = if matches!(fault, OpenApiFault::RateLimited { .. }) {
                429
            } else {
                400
            };
            return Some(
                answer_builder(shared, status)
                    .insert_header(("x-ogw-ratelimit-limit", "50"))
                    .insert_header(("x-ogw-ratelimit-reset", reset_secs.to_string()))
                    .json(serde_json::json!({
                        "code": 99_991_400,
                        "msg": "request trigger frequency limit",
                    })),
            );
        }
        OpenApiFault::HttpStatus(status) => {
            return Some(
                answer_builder(shared, *status)
                    .content_type("text/plain")
                    .body("upstream unavailable"),
            );
        }
        OpenApiFault::ApiCode(code) => {
            return Some(json_answer(
                shared,
                400,
                serde_json::json!({"code": code, "msg": api_code_message(*code)}),
            ));
        }
        OpenApiFault::Delay(_) | OpenApiFault::SlowDown => return None,
    };
    let body = if token_style {
        serde_json::json!({"code": code, "error": error, "error_description": text})
    } else {
        serde_json::json!({"code": code, "msg": text})
    };
    Some(json_answer(shared, status, body))
}

/// The platform's message for a general API error code (§6).
pub(crate) fn api_code_message(code: i64) -> &'static str {
    match code {
        99_991_661 => "Missing access token for authorization.",
        99_991_663 => "Invalid access token for authorization.",
        99_991_668 => {
            "Invalid access token for authorization. Please make a request with token attached."
        }
        99_991_677 => "Authentication token expired.",
        _ => "error",
    }
}

/// Holds the answer back for a [`OpenApiFault::Delay`].
pub(crate) async fn apply_delay(fault: &Option<OpenApiFault>) {
    if let Some(OpenApiFault::Delay(d)) = fault {
        actix_rt::time::sleep(*d).await;
    }
}

// ----- the handle ----------------------------------------------------------------------

impl Sandbox {
    /// Moves the sandbox clock forward: tokens, codes, device codes and card-update tokens
    /// age by `by` at once (no sleeping in tests).
    pub fn advance_time(&self, by: Duration) {
        self.shared.lock().openapi.clock_offset += by;
        self.shared.notify();
    }

    /// Queues `fault` for the next request of `route` (FIFO per route).
    pub fn inject_openapi_fault(&self, route: OpenApiRoute, fault: OpenApiFault) {
        self.shared.lock().openapi.faults.push_back((route, fault));
    }

    /// Requests that reached the tenant token endpoint (faulted ones included).
    pub fn tenant_token_requests(&self) -> usize {
        self.shared.lock().openapi.tenant_token_requests
    }

    /// Every request to the user token endpoint, in arrival order.
    pub fn token_requests(&self) -> Vec<RecordedTokenRequest> {
        self.shared.lock().openapi.token_requests.clone()
    }

    /// How many refresh requests carried this refresh token.
    pub fn refresh_token_uses(&self, refresh_token: &str) -> usize {
        self.shared
            .lock()
            .openapi
            .token_requests
            .iter()
            .filter(|r| {
                r.refresh_token
                    .as_ref()
                    .is_some_and(|t| t.expose() == refresh_token)
            })
            .count()
    }

    /// Refresh requests with an already used refresh token (answered 20073). A correct
    /// client never causes one: tests assert this is 0 in normal flows.
    pub fn refresh_token_reuse_violations(&self) -> usize {
        self.shared.lock().openapi.refresh_reuse_violations
    }

    /// `user_info` requests so far.
    pub fn user_info_requests(&self) -> usize {
        self.shared.lock().openapi.user_info_requests
    }

    /// Revokes every access and refresh token of `open_id` (user, admin or risk control,
    /// §2.4): refreshing answers 20064, `user_info` answers 20005.
    pub fn revoke_user_grants(&self, open_id: &str) {
        let mut state = self.shared.lock();
        for grant in state.openapi.refresh_tokens.values_mut() {
            if grant.open_id == open_id && grant.state == RefreshState::Active {
                grant.state = RefreshState::Revoked;
            }
        }
        for grant in state.openapi.access_tokens.values_mut() {
            if grant.open_id == open_id {
                grant.revoked = true;
            }
        }
        drop(state);
        self.shared.notify();
    }

    /// Waits until at least `n` user-token requests have arrived and returns all of them.
    ///
    /// # Errors
    /// [`WaitTimeout`] after `timeout`.
    pub async fn wait_for_token_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedTokenRequest>, WaitTimeout> {
        self.wait_until(timeout, |s| {
            let got = s.openapi.token_requests.len();
            if got >= n {
                Ok(s.openapi.token_requests.clone())
            } else {
                Err(format!("{n} token requests (got {got})"))
            }
        })
        .await
    }

    // ----- simulated users ---------------------------------------------------------------

    fn check_user(&self, open_id: &str) -> Result<(), UserActionError> {
        if self.shared.config.openapi.user(open_id).is_some() {
            Ok(())
        } else {
            Err(UserActionError::UnknownUser(open_id.into()))
        }
    }

    fn decide_device(
        &self,
        user_code: &str,
        decision: DeviceDecision,
    ) -> Result<(), UserActionError> {
        let mut state = self.shared.lock();
        let now = state.openapi.now();
        let grant = state
            .openapi
            .devices
            .values_mut()
            .find(|g| g.user_code == user_code)
            .ok_or(UserActionError::UnknownUserCode)?;
        if grant.redeemed || now >= grant.expires_at {
            return Err(UserActionError::DeviceCodeInvalid);
        }
        grant.decision = decision;
        drop(state);
        self.shared.notify();
        Ok(())
    }

    /// The user `open_id` opens the verification page for `user_code` and approves. The
    /// approving user need not be the one the service meant (a forwarded link): the tokens
    /// are issued for whoever approved.
    ///
    /// # Errors
    /// [`UserActionError::UnknownUser`], [`UserActionError::UnknownUserCode`],
    /// [`UserActionError::DeviceCodeInvalid`].
    pub fn approve_device(&self, user_code: &str, open_id: &str) -> Result<(), UserActionError> {
        self.check_user(open_id)?;
        self.decide_device(user_code, DeviceDecision::Approved(open_id.into()))
    }

    /// The user `open_id` approves the device authorization behind the last card sent to
    /// them (its Authorize link carries the `user_code`, possibly inside the AppLink
    /// wrapper's `url` parameter): what a person does after clicking Authorize. For demos
    /// and examples; tests drive [`approve_device`](Self::approve_device) directly.
    ///
    /// # Errors
    /// [`UserActionError::UnknownUserCode`] when no card to `open_id` carries a
    /// `user_code`; otherwise as [`approve_device`](Self::approve_device).
    pub fn approve_last_card(&self, open_id: &str) -> Result<(), UserActionError> {
        fn user_code_in(value: &serde_json::Value) -> Option<String> {
            match value {
                serde_json::Value::String(text) => {
                    let url = url::Url::parse(text).ok()?;
                    url.query_pairs().find_map(|(k, v)| match k.as_ref() {
                        "user_code" => Some(v.into_owned()),
                        "url" => user_code_in(&serde_json::Value::String(v.into_owned())),
                        _ => None,
                    })
                }
                serde_json::Value::Array(items) => items.iter().find_map(user_code_in),
                serde_json::Value::Object(map) => map.values().find_map(user_code_in),
                _ => None,
            }
        }
        let user_code = self
            .sent_cards()
            .iter()
            .rev()
            .filter(|c| c.receive_id == open_id)
            .find_map(|c| user_code_in(&c.card))
            .ok_or(UserActionError::UnknownUserCode)?;
        self.approve_device(&user_code, open_id)
    }

    /// The user `open_id` opens the verification page for `user_code` and refuses; polls
    /// answer `access_denied`.
    ///
    /// # Errors
    /// As [`approve_device`](Self::approve_device).
    pub fn deny_device(&self, user_code: &str, open_id: &str) -> Result<(), UserActionError> {
        self.check_user(open_id)?;
        self.decide_device(user_code, DeviceDecision::Denied)
    }

    /// The user `open_id` visits the authorize URL (§1) and consents. Checks `client_id`,
    /// `response_type=code` and the registered `redirect_uri` (exact match), issues a
    /// single-use code valid [`OpenApiSandboxConfig::code_lifetime`] bound to the
    /// `redirect_uri`, scope and PKCE challenge, and returns the redirect URL
    /// `redirect_uri?code=…&state=…` (fragment kept after the query, §1.1).
    ///
    /// # Errors
    /// [`UserActionError::UnknownUser`]; [`UserActionError::AuthorizePage`] with 20029 for
    /// an unregistered `redirect_uri`, 20048 for another app's `client_id`, 20001 for a
    /// missing or malformed parameter.
    pub fn authorize(&self, authorize_url: &str, open_id: &str) -> Result<String, UserActionError> {
        self.check_user(open_id)?;
        let request = self.parse_authorize(authorize_url)?;
        let code = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        {
            let mut state = self.shared.lock();
            let now = state.openapi.now();
            state.openapi.codes.insert(
                code.clone(),
                AuthCode {
                    open_id: open_id.into(),
                    redirect_uri: request.redirect_uri.clone(),
                    scope: request.scope,
                    challenge: request.challenge,
                    issued_at: now,
                    used: false,
                },
            );
        }
        self.shared.notify();
        Ok(redirect_with(
            &request.redirect_uri,
            &[("code", &code)],
            request.state.as_deref(),
        ))
    }

    /// The user visits the authorize URL and refuses: returns
    /// `redirect_uri?error=access_denied&state=…` (§1.2).
    ///
    /// # Errors
    /// As [`authorize`](Self::authorize).
    pub fn deny_authorization(
        &self,
        authorize_url: &str,
        open_id: &str,
    ) -> Result<String, UserActionError> {
        self.check_user(open_id)?;
        let request = self.parse_authorize(authorize_url)?;
        Ok(redirect_with(
            &request.redirect_uri,
            &[("error", "access_denied")],
            request.state.as_deref(),
        ))
    }

    fn parse_authorize(&self, authorize_url: &str) -> Result<AuthorizeRequest, UserActionError> {
        let page = |code: i64, reason: &str| UserActionError::AuthorizePage {
            code,
            reason: reason.into(),
        };
        let url = url::Url::parse(authorize_url).map_err(|_| page(20001, "not a URL"))?;
        if url.path() != AUTHORIZE_PATH {
            return Err(page(20001, "not the authorize page"));
        }
        let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let get = |k: &str| params.get(k).cloned();
        if get("client_id").as_deref() != Some(self.shared.config.app_id.as_str()) {
            return Err(page(20048, "unknown client_id"));
        }
        if get("response_type").as_deref() != Some("code") {
            return Err(page(20001, "response_type must be code"));
        }
        let redirect_uri = get("redirect_uri").ok_or_else(|| page(20001, "no redirect_uri"))?;
        if !self
            .shared
            .config
            .openapi
            .redirect_uris
            .contains(&redirect_uri)
        {
            return Err(page(20029, "redirect_uri request is illegal"));
        }
        let challenge = match (get("code_challenge"), get("code_challenge_method")) {
            (None, _) => None,
            (Some(c), None) => Some((c, "plain".to_string())),
            (Some(c), Some(m)) if m == "S256" || m == "plain" => Some((c, m)),
            (Some(_), Some(_)) => return Err(page(20001, "bad code_challenge_method")),
        };
        Ok(AuthorizeRequest {
            redirect_uri,
            scope: get("scope").unwrap_or_default(),
            state: get("state"),
            challenge,
        })
    }

    // ----- cards -------------------------------------------------------------------------

    /// Every card accepted by `POST /im/v1/messages` (a uuid resend is not recorded twice).
    /// Empty when [`OpenApiSandboxConfig::keep_cards`] is off.
    pub fn sent_cards(&self) -> Vec<SentCard> {
        self.shared.lock().openapi.sent_cards.clone()
    }

    /// How many new messages `POST /im/v1/messages` accepted (a uuid resend is not counted
    /// twice), whether or not the cards are kept.
    pub fn sent_card_count(&self) -> usize {
        self.shared.lock().openapi.sent_card_count
    }

    /// Every accepted PATCH of a card.
    pub fn card_patches(&self) -> Vec<CardPatch> {
        self.shared.lock().openapi.patches.clone()
    }

    /// Every accepted delayed card update.
    pub fn delayed_card_updates(&self) -> Vec<DelayedCardUpdate> {
        self.shared.lock().openapi.delayed_updates.clone()
    }

    /// Waits until at least `n` cards were sent and returns all of them.
    ///
    /// # Errors
    /// [`WaitTimeout`] after `timeout`.
    pub async fn wait_for_sent_cards(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<SentCard>, WaitTimeout> {
        self.wait_until(timeout, |s| {
            let got = s.openapi.sent_cards.len();
            if got >= n {
                Ok(s.openapi.sent_cards.clone())
            } else {
                Err(format!("{n} sent cards (got {got})"))
            }
        })
        .await
    }

    /// Issues a card-update token (`c-…`) for a sent message, as a `card.action.trigger`
    /// callback's `event.token` would carry: valid 30 minutes, 2 uses (§4.3, §5.1).
    pub fn issue_card_update_token(&self, message_id: &str) -> Secret<String> {
        let token = random_id("c-");
        let mut state = self.shared.lock();
        let now = state.openapi.now();
        state.openapi.card_tokens.insert(
            token.clone(),
            CardToken {
                message_id: message_id.into(),
                issued_at: now,
                uses: 0,
            },
        );
        Secret::new(token)
    }
}

struct AuthorizeRequest {
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    challenge: Option<(String, String)>,
}

/// `redirect_uri` with `pairs` and `state` appended to its query; a fragment stays last.
fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)], state: Option<&str>) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (k, v) in pairs {
                    query.append_pair(k, v);
                }
                if let Some(s) = state {
                    query.append_pair("state", s);
                }
            }
            url.into()
        }
        Err(_) => redirect_uri.to_string(),
    }
}

/// PKCE check (RFC 7636 §4.6).
pub(crate) fn pkce_ok(challenge: &(String, String), verifier: Option<&str>) -> bool {
    let Some(verifier) = verifier else {
        return false;
    };
    let valid_chars = verifier
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
    if !(43..=128).contains(&verifier.len()) || !valid_chars {
        return false;
    }
    match challenge.1.as_str() {
        "S256" => s256_challenge(verifier) == challenge.0,
        _ => verifier == challenge.0,
    }
}
