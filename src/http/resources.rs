//! The JSON bodies of the control API, shared by the server ([`crate::http`]) and the
//! client ([`crate::client`]) so both sides agree on one shape.
//!
//! Contract: `INTERFACE.md` ("Control API"). Timestamps are RFC 3339 UTC strings with
//! millisecond precision (`2026-11-30T07:27:18.123Z`). None of these types holds a secret
//! except [`TokenResource`], the answer of the token route itself.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The body of `POST /v1/authorizations`. An unknown field (e.g. `scope` for `scopes`)
/// is refused (`400 unknown_field`), not ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    /// The user to authorize (`ou_…`).
    pub open_id: String,
    /// Scopes; the configured defaults when empty (`offline_access` is always added).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Language of the user's cards and toasts (`zh_cn`, `en_us`, `zh-CN`, …); absent:
    /// `auth.card_locale`. The platform does not tell a user's language before consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// The `202` answer of `POST /v1/authorizations`: the new session, or the one already in
/// flight for this user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationAccepted {
    /// Session id (`as_…`).
    pub session_id: String,
    /// Its state now (see [`SessionResource::state`]).
    pub state: String,
}

/// A session as `GET /v1/authorizations/{session_id}` and `GET /v1/authorizations` show
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResource {
    /// Session id.
    pub session_id: String,
    /// The user.
    pub open_id: String,
    /// `created`, `card_sent`, `awaiting_user`, `exchanging`, `authorized`, `expired`,
    /// `denied` or `failed`.
    pub state: String,
    /// Why it failed, when `failed` (e.g. `wrong_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The platform's error code behind a failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_code: Option<i64>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Last transition, RFC 3339 UTC.
    pub updated_at: String,
    /// Expiry of the session, RFC 3339 UTC.
    pub expires_at: String,
}

impl SessionResource {
    /// True for the end states `authorized`, `expired`, `denied` and `failed`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state.as_str(),
            "authorized" | "expired" | "denied" | "failed"
        )
    }
}

/// One entry of `GET /v1/grants` (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantResource {
    /// The user.
    pub open_id: String,
    /// `active`, `refresh_failed`, `refresh_uncertain`, `needs_reauth` or `revoked`.
    pub status: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry, RFC 3339 UTC.
    pub access_expires_at: String,
    /// Refresh token expiry, RFC 3339 UTC.
    pub refresh_expires_at: String,
}

/// One entry of `GET /v1/events/forward`: the event gateway's outbox for one
/// `[[events.forward]]` target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardTargetResource {
    /// The target's URL.
    pub target: String,
    /// Deliveries not yet taken (waiting, retrying or in flight).
    pub pending: u64,
    /// Deliveries the target took (2xx) since the start.
    pub delivered_total: u64,
    /// Failed tries (non-2xx, timeout, connection refused) since the start.
    pub failed_total: u64,
    /// Deliveries given up after `events.retry_for_secs`, kept in the outbox.
    pub dead: u64,
    /// When the oldest pending delivery's event arrived, RFC 3339 UTC; absent when none
    /// is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_at: Option<String>,
}

/// The answer of `GET /v1/grants/{open_id}/token`, as the client reads it. `Debug` and
/// `Serialize` redact the token (the server writes it with [`Secret::expose`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResource {
    /// The `user_access_token`.
    pub access_token: Secret<String>,
    /// Its expiry, RFC 3339 UTC (at least `refresh.margin_secs` after the answer).
    pub expires_at: String,
}

/// Every error answer: `{"error": "<stable code>", "message": "<human text>"}`, plus
/// `field` when one request field is at fault, and `retry_after_secs` on `429` and on
/// `503 refresh_failed` (also in `Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code: `unauthorized`, `no_grant`, `needs_reauth`,
    /// `rate_limited`, `no_session`, `invalid_open_id`, `invalid_state`,
    /// `unknown_field`, `missing_field`, `invalid_json`, `payload_too_large`,
    /// `unsupported_media_type`, …
    pub error: String,
    /// Human-readable explanation (never holds a secret).
    pub message: String,
    /// The request field at fault (`open_id`, the unknown or missing body field), when
    /// one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before retrying (`429`, and `503 refresh_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// The answer of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResource {
    /// `connecting`, `connected`, `reconnecting`, `failed` or `stopped`.
    pub connection: String,
    /// `ok`, `unavailable` or `absent`.
    pub vault: String,
    /// Present when the service was started with `--accept-loss` on a vault that had lost
    /// acknowledged writes: what was lost, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_loss: Option<String>,
}
