//! OAuth grants for a `user_access_token` (§1, §2):
//!
//! - device authorization grant (RFC 8628, §2.6, **[sdk] only**):
//!   [`OpenApiClient::request_device_authorization`] on the accounts host, then
//!   [`OpenApiClient::poll_device_token`] at the v2 token endpoint every `interval`;
//! - authorization code with PKCE: [`OpenApiClient::authorize_url`] (§1.1) with a
//!   [`PkcePair`], then [`OpenApiClient::exchange_code`] (§2.1);
//! - [`OpenApiClient::refresh_user_token`] (§2.2), which is **never resent blindly**:
//!   refresh tokens are single use (§2.4), so an unanswered refresh ends in
//!   [`OpenApiError::RefreshOutcomeUnknown`].
//!
//! Token answers become a [`UserTokenGrant`] whose lifetimes are durations in **seconds**
//! from the answer (the caller turns them into instants with its own `now`).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{Call, OpenApiClient, OpenApiError};
use crate::secret::Secret;

/// Authorize page path on the accounts host (§1).
pub const AUTHORIZE_PATH: &str = "/open-apis/authen/v1/authorize";
/// v2 user token endpoint path on the open host (§2).
pub const TOKEN_PATH: &str = "/open-apis/authen/v2/oauth/token";
/// Device authorization path on the accounts host (§2.6).
pub const DEVICE_AUTHORIZATION_PATH: &str = "/oauth/v1/device_authorization";
/// `grant_type` of device-code polling (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Scope that makes the platform issue a refresh token (§2.4); always requested.
pub const OFFLINE_ACCESS: &str = "offline_access";
/// Device `expires_in` assumed when the answer lacks it, seconds (§2.6).
pub const DEFAULT_DEVICE_EXPIRES_IN: Duration = Duration::from_secs(240);
/// Device `interval` assumed when the answer lacks it, seconds (§2.6).
pub const DEFAULT_DEVICE_INTERVAL: Duration = Duration::from_secs(5);
/// Added to the polling interval on `slow_down`, seconds (RFC 8628 §3.5, §2.6).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Largest polling interval after repeated `slow_down`s, seconds (§2.6).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Asking for a device code twice just yields two codes: harmless.
const DEVICE_AUTHORIZATION: Call = Call::new("device authorization", true);
/// Polling again is harmless: until the user acts a poll changes nothing, and a granted
/// answer that was lost shows up as [`DevicePoll::Expired`] on the next poll (the device
/// code is spent), so the session ends instead of binding tokens twice.
const DEVICE_POLL: Call = Call::new("device code poll", true);
/// The code is single use (20065 on reuse, §2.5).
const CODE_EXCHANGE: Call = Call::new("authorization_code grant", false);
/// The refresh token is single use (20073 on reuse, §2.4).
const REFRESH: Call = Call {
    name: "refresh_token grant",
    idempotent: false,
    refresh: true,
};

/// A user's token pair from the token endpoint (§2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTokenGrant {
    /// The `user_access_token` (store ≥ 4 KB, §2.3).
    pub access_token: Secret<String>,
    /// Lifetime of the access token from the answer (`expires_in`, seconds; about 2 h).
    pub expires_in: Duration,
    /// The new refresh token; `None` unless `offline_access` was granted (§2.4). Single use.
    pub refresh_token: Option<Secret<String>>,
    /// Lifetime of the refresh token (`refresh_token_expires_in`, seconds; about 7 days).
    pub refresh_token_expires_in: Option<Duration>,
    /// Space-separated scopes actually granted.
    pub scope: String,
    /// `Bearer`.
    pub token_type: String,
}

impl UserTokenGrant {
    /// When the access token expires, given the time `now` the answer arrived (works for
    /// `Instant` and `SystemTime`): `now + expires_in` (§8 item 3).
    pub fn access_expires_at<T: std::ops::Add<Duration, Output = T>>(&self, now: T) -> T {
        now + self.expires_in
    }

    /// When the refresh token expires, given the time `now` the answer arrived:
    /// `now + refresh_token_expires_in`, or `None` without a refresh token.
    pub fn refresh_expires_at<T: std::ops::Add<Duration, Output = T>>(&self, now: T) -> Option<T> {
        self.refresh_token_expires_in.map(|d| now + d)
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Secret<String>,
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<Secret<String>>,
    #[serde(default)]
    refresh_token_expires_in: Option<u64>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    token_type: String,
}

impl From<TokenAnswer> for UserTokenGrant {
    fn from(a: TokenAnswer) -> Self {
        UserTokenGrant {
            access_token: a.access_token,
            expires_in: Duration::from_secs(a.expires_in),
            refresh_token_expires_in: a
                .refresh_token
                .as_ref()
                .and(a.refresh_token_expires_in.map(Duration::from_secs)),
            refresh_token: a.refresh_token,
            scope: a.scope,
            token_type: a.token_type,
        }
    }
}

/// A device authorization (§2.6): show `verification_uri_complete` to the user, then poll
/// with `device_code` every `interval` until `expires_in` runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    /// The code polled with; a credential, never shown to the user.
    pub device_code: Secret<String>,
    /// The code the user may be asked to type.
    pub user_code: String,
    /// The verification page.
    pub verification_uri: String,
    /// The verification page with the user code filled in: the card's open-URL button.
    pub verification_uri_complete: String,
    /// How long the device code lives (seconds; 240 when absent, §2.6).
    pub expires_in: Duration,
    /// Minimum wait between polls (seconds; 5 when absent, §2.6).
    pub interval: Duration,
}

#[derive(Deserialize)]
struct DeviceAnswer {
    device_code: Secret<String>,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
}

/// The outcome of one device-code poll (RFC 8628 §3.5, §2.6). Expected outcomes are values,
/// not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// The user approved: the token pair.
    Granted(UserTokenGrant),
    /// `authorization_pending`: the user has not acted; poll again after the interval.
    Pending,
    /// `slow_down`: polled too fast; add 5 s to the interval ([`next_poll_interval`]).
    SlowDown,
    /// `access_denied`: the user refused. Stop.
    Denied,
    /// `expired_token` (or `invalid_grant`): the device code is no longer valid. Stop.
    Expired,
}

/// The interval to wait before the next poll after `poll`: +5 s on
/// [`DevicePoll::SlowDown`], capped at 60 s (§2.6); unchanged otherwise.
pub fn next_poll_interval(current: Duration, poll: &DevicePoll) -> Duration {
    match poll {
        DevicePoll::SlowDown => (current + SLOW_DOWN_STEP).min(MAX_POLL_INTERVAL),
        _ => current,
    }
}

/// A PKCE pair (RFC 7636, method `S256`): send `challenge` on the authorize URL and
/// `verifier` to the token endpoint (§1.1, §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkcePair {
    /// `code_verifier`: 43–128 chars of `[A-Za-z0-9-._~]`; a credential.
    pub verifier: Secret<String>,
    /// `code_challenge` = BASE64URL-no-pad(SHA-256(verifier)).
    pub challenge: String,
}

impl PkcePair {
    /// A fresh pair: a 43-character verifier from 32 random bytes.
    pub fn generate() -> PkcePair {
        let bytes: [u8; 32] = rand::thread_rng().r#gen();
        PkcePair::from_verifier(Secret::new(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The pair of a given verifier (S256 challenge).
    pub fn from_verifier(verifier: Secret<String>) -> PkcePair {
        let challenge = s256_challenge(verifier.expose());
        PkcePair {
            verifier,
            challenge,
        }
    }
}

/// `BASE64URL-no-pad(SHA-256(verifier))`, the S256 `code_challenge` (RFC 7636 §4.2).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Adds `offline_access` (needed for a refresh token, §2.4) to `scopes` unless present, and
/// joins them with spaces.
pub fn scope_with_offline_access(scopes: &[&str]) -> String {
    let mut all: Vec<&str> = scopes.iter().copied().filter(|s| !s.is_empty()).collect();
    if !all.contains(&OFFLINE_ACCESS) {
        all.push(OFFLINE_ACCESS);
    }
    all.join(" ")
}

#[derive(Serialize)]
struct CodeBody<'a> {
    grant_type: &'static str,
    client_id: &'a str,
    client_secret: &'a str,
    code: &'a str,
    redirect_uri: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code_verifier: Option<&'a str>,
}

#[derive(Serialize)]
struct RefreshBody<'a> {
    grant_type: &'static str,
    client_id: &'a str,
    client_secret: &'a str,
    refresh_token: &'a str,
}

impl OpenApiClient {
    /// The authorize page URL (§1.1): `client_id`, `response_type=code`, the registered
    /// `redirect_uri`, `scope` (with `offline_access` added), `state`, and the PKCE
    /// `code_challenge` with `code_challenge_method=S256`. Send the same `redirect_uri` to
    /// [`exchange_code`](Self::exchange_code).
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        scopes: &[&str],
        state: &str,
        code_challenge: &str,
    ) -> String {
        let t = self.transport();
        let mut url = url::Url::parse(&t.accounts_url(AUTHORIZE_PATH))
            .expect("accounts_base_url was validated as a URL");
        url.query_pairs_mut()
            .append_pair("client_id", &t.credentials.app_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scope_with_offline_access(scopes))
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// Starts a device authorization (§2.6): `POST {accounts}/oauth/v1/device_authorization`,
    /// form body `client_id`, `scope` (with `offline_access` added), HTTP Basic app
    /// credentials.
    ///
    /// # Errors
    /// [`OpenApiError::Api`] with the OAuth `error` (e.g. `invalid_client`, `invalid_scope`);
    /// [`OpenApiError::InvalidResponse`] when a field is missing; timeouts, network errors.
    pub async fn request_device_authorization(
        &self,
        scopes: &[&str],
    ) -> Result<DeviceAuthorization, OpenApiError> {
        let t = self.transport();
        let c = &t.credentials;
        let basic = STANDARD.encode(format!("{}:{}", c.app_id, c.app_secret.expose()));
        let scope = scope_with_offline_access(scopes);
        let request = t
            .http
            .post(t.accounts_url(DEVICE_AUTHORIZATION_PATH))
            .insert_header(("Authorization", format!("Basic {basic}")))
            .send_form(&[("client_id", c.app_id.as_str()), ("scope", scope.as_str())]);
        let answer = t.execute(DEVICE_AUTHORIZATION, request).await?;
        let a: DeviceAnswer = answer.decode(DEVICE_AUTHORIZATION)?;
        Ok(DeviceAuthorization {
            verification_uri_complete: a
                .verification_uri_complete
                .unwrap_or_else(|| a.verification_uri.clone()),
            device_code: a.device_code,
            user_code: a.user_code,
            verification_uri: a.verification_uri,
            expires_in: a
                .expires_in
                .map_or(DEFAULT_DEVICE_EXPIRES_IN, Duration::from_secs),
            interval: a
                .interval
                .map_or(DEFAULT_DEVICE_INTERVAL, Duration::from_secs),
        })
    }

    /// One poll of the token endpoint with the device code (§2.6): form body
    /// `grant_type=urn:ietf:params:oauth:grant-type:device_code`, `device_code`,
    /// `client_id`, `client_secret`. The RFC 8628 answers are [`DevicePoll`] values.
    ///
    /// # Errors
    /// Other answers as [`OpenApiError::Api`] (20050/20072 are retryable, see
    /// [`OpenApiError::retry_advice`]); timeouts and network errors (poll again at the next
    /// interval: until the user approves, a poll changes nothing).
    pub async fn poll_device_token(
        &self,
        device_code: &Secret<String>,
    ) -> Result<DevicePoll, OpenApiError> {
        let t = self.transport();
        let c = &t.credentials;
        let request = t.http.post(t.open_url(TOKEN_PATH)).send_form(&[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code.expose().as_str()),
            ("client_id", c.app_id.as_str()),
            ("client_secret", c.app_secret.expose().as_str()),
        ]);
        let result: Result<DevicePoll, OpenApiError> = async {
            let answer = t.execute(DEVICE_POLL, request).await?;
            let fields = answer.error_fields();
            let outcome = match fields.error.as_deref() {
                Some("authorization_pending") => Some(DevicePoll::Pending),
                Some("slow_down") => Some(DevicePoll::SlowDown),
                Some("access_denied") => Some(DevicePoll::Denied),
                Some("expired_token" | "invalid_grant") if fields.code.is_none() => {
                    Some(DevicePoll::Expired)
                }
                _ => None,
            };
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
            let grant: TokenAnswer = answer.decode(DEVICE_POLL)?;
            Ok(DevicePoll::Granted(grant.into()))
        }
        .await;
        let outcome = match &result {
            Ok(DevicePoll::Granted(_)) => "granted",
            Ok(DevicePoll::Pending) => "pending",
            Ok(DevicePoll::SlowDown) => "slow_down",
            Ok(DevicePoll::Denied) => "denied",
            Ok(DevicePoll::Expired) => "expired",
            Err(e) => error_outcome(e),
        };
        self.count_token_call("device_poll", outcome);
        result
    }

    /// Exchanges an authorization `code` (5 minutes, single use, §1.2) for tokens (§2.1):
    /// JSON body with `grant_type=authorization_code`, the app credentials, the same
    /// `redirect_uri` as on the authorize URL and the PKCE `code_verifier` when a challenge
    /// was sent.
    ///
    /// # Errors
    /// [`OpenApiError::Api`]: 20003 (code not found), 20004 (expired), 20065 (used) — all
    /// [`needs_reauthorization`](OpenApiError::needs_reauthorization); 20049 (PKCE failed),
    /// 20071 (`redirect_uri` mismatch); 20050/20072 retryable. Timeouts and network errors
    /// are not retryable (the code may have been consumed).
    pub async fn exchange_code(
        &self,
        code: &Secret<String>,
        redirect_uri: &str,
        code_verifier: Option<&Secret<String>>,
    ) -> Result<UserTokenGrant, OpenApiError> {
        let t = self.transport();
        let c = &t.credentials;
        let body = CodeBody {
            grant_type: "authorization_code",
            client_id: &c.app_id,
            client_secret: c.app_secret.expose(),
            code: code.expose(),
            redirect_uri,
            code_verifier: code_verifier.map(|v| v.expose().as_str()),
        };
        let request = t.http.post(t.open_url(TOKEN_PATH)).send_json(&body);
        let result: Result<UserTokenGrant, OpenApiError> = async {
            let answer = t.execute(CODE_EXCHANGE, request).await?;
            let grant: TokenAnswer = answer.decode(CODE_EXCHANGE)?;
            Ok(grant.into())
        }
        .await;
        self.count_token_call(
            "code_exchange",
            result.as_ref().map_or_else(error_outcome, |_| "ok"),
        );
        result
    }

    /// Exchanges a refresh token for a new pair (§2.2). The old refresh token is dead as
    /// soon as the platform handles the request (rotation, §2.4): persist the new pair
    /// before using it. This call is sent **once**; it is never retried internally.
    ///
    /// # Errors
    /// [`OpenApiError::RefreshOutcomeUnknown`] when the request was sent but no answer came
    /// (timeout, broken connection): do not reuse the refresh token.
    /// [`OpenApiError::Api`]: 20073 (already used), 20064 (revoked), 20037 (expired, incl.
    /// the 365-day cap), 20026 (invalid) — all
    /// [`needs_reauthorization`](OpenApiError::needs_reauthorization); 20074 (refresh
    /// switched off); 20050/20072 retryable ([`OpenApiError::retry_advice`]).
    /// [`OpenApiError::Transport`] with `sent == false` when no connection was made.
    pub async fn refresh_user_token(
        &self,
        refresh_token: &Secret<String>,
    ) -> Result<UserTokenGrant, OpenApiError> {
        let t = self.transport();
        let c = &t.credentials;
        let body = RefreshBody {
            grant_type: "refresh_token",
            client_id: &c.app_id,
            client_secret: c.app_secret.expose(),
            refresh_token: refresh_token.expose(),
        };
        let request = t.http.post(t.open_url(TOKEN_PATH)).send_json(&body);
        let result: Result<UserTokenGrant, OpenApiError> = async {
            let answer = t.execute(REFRESH, request).await?;
            let grant: TokenAnswer = answer.decode(REFRESH)?;
            Ok(grant.into())
        }
        .await;
        self.count_token_call(
            "refresh",
            result.as_ref().map_or_else(error_outcome, |_| "ok"),
        );
        result
    }
}

/// The `outcome` label of a failed token-endpoint call
/// (`lark_auth_token_endpoint_calls_total`).
fn error_outcome(error: &OpenApiError) -> &'static str {
    match error {
        OpenApiError::Api(f)
            if f.status == 429 || f.code == Some(super::error::CODE_RATE_LIMITED) =>
        {
            "rate_limited"
        }
        OpenApiError::Api(_) => "platform_error",
        OpenApiError::Transport { .. } => "transport_error",
        OpenApiError::Timeout { .. } => "timeout",
        OpenApiError::RefreshOutcomeUnknown { .. } => "outcome_unknown",
        OpenApiError::InvalidResponse { .. } => "invalid_response",
        OpenApiError::InvalidRequest { .. } => "invalid_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_base64url_of_sha256() {
        // SHA-256("abc") is the FIPS 180-2 test vector ba7816bf…15ad.
        let digest =
            hex::decode("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                .unwrap();
        assert_eq!(s256_challenge("abc"), URL_SAFE_NO_PAD.encode(digest));
        assert_eq!(
            s256_challenge("abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }

    #[test]
    fn generated_verifiers_follow_rfc7636() {
        let a = PkcePair::generate();
        let b = PkcePair::generate();
        assert_ne!(a.verifier, b.verifier);
        let v = a.verifier.expose();
        assert!((43..=128).contains(&v.len()));
        assert!(
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        );
        assert_eq!(a.challenge, s256_challenge(v));
        assert!(!format!("{a:?}").contains(v.as_str()));
    }

    #[test]
    fn slow_down_adds_five_seconds_up_to_sixty() {
        let s = Duration::from_secs;
        assert_eq!(next_poll_interval(s(5), &DevicePoll::SlowDown), s(10));
        assert_eq!(next_poll_interval(s(58), &DevicePoll::SlowDown), s(60));
        assert_eq!(next_poll_interval(s(5), &DevicePoll::Pending), s(5));
    }

    #[test]
    fn offline_access_is_added_once() {
        assert_eq!(scope_with_offline_access(&["a"]), "a offline_access");
        assert_eq!(
            scope_with_offline_access(&["offline_access", "a"]),
            "offline_access a"
        );
    }

    #[test]
    fn token_fixtures_parse_and_keep_units() {
        let text =
            include_str!("../../tests/fixtures/openapi/token_refresh_ok_lark_string_code.json");
        let a: TokenAnswer = serde_json::from_str(text).unwrap();
        let grant = UserTokenGrant::from(a);
        assert_eq!(grant.expires_in, Duration::from_secs(7200));
        assert_eq!(
            grant.refresh_token_expires_in,
            Some(Duration::from_secs(603_000))
        );
        let text = include_str!(
            "../../tests/fixtures/openapi/token_authorization_code_ok_without_refresh.json"
        );
        let grant = UserTokenGrant::from(serde_json::from_str::<TokenAnswer>(text).unwrap());
        assert!(grant.refresh_token.is_none() && grant.refresh_token_expires_in.is_none());
    }
}
