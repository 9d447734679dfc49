//! The one error type of the OpenAPI client, and the retry advice that goes with it.
//!
//! Facts from `lark-openapi-auth.md`: token-endpoint error table (§2.5), refresh-token
//! rotation and single use (§2.4), rate limiting with `x-ogw-ratelimit-reset` (§2.5, §7),
//! `code` as number or numeric string (§2.3, §8 item 1). No variant ever carries a token,
//! code, `code_verifier`, device code or the app secret.

use std::fmt;
use std::time::Duration;

/// Platform `code` of rate limiting (HTTP 429, §7).
pub const CODE_RATE_LIMITED: i64 = 99_991_400;
/// Token endpoint: unexpected server error, retry (HTTP 500, §2.5).
pub const CODE_SERVER_ERROR: i64 = 20_050;
/// Token endpoint: temporarily unavailable, retry (HTTP 503, §2.5).
pub const CODE_TEMPORARILY_UNAVAILABLE: i64 = 20_072;
/// Token endpoint: refresh token already used (single use, §2.4).
pub const CODE_REFRESH_TOKEN_USED: i64 = 20_073;
/// Token endpoint: refresh token revoked (§2.4).
pub const CODE_REFRESH_TOKEN_REVOKED: i64 = 20_064;
/// Token endpoint: refresh token expired, incl. the 365-day cap (§2.4).
pub const CODE_REFRESH_TOKEN_EXPIRED: i64 = 20_037;
/// Token endpoint: refresh token invalid (§2.5).
pub const CODE_REFRESH_TOKEN_INVALID: i64 = 20_026;
/// Token endpoint: authorization code not found (§2.5).
pub const CODE_AUTH_CODE_NOT_FOUND: i64 = 20_003;
/// Token endpoint: authorization code expired, older than 5 minutes (§2.5).
pub const CODE_AUTH_CODE_EXPIRED: i64 = 20_004;
/// Token endpoint: authorization code already used (§2.5).
pub const CODE_AUTH_CODE_USED: i64 = 20_065;
/// Token endpoint: PKCE check failed (§2.5).
pub const CODE_PKCE_FAILED: i64 = 20_049;
/// Token endpoint: `redirect_uri` differs from the authorize page's (§2.5).
pub const CODE_REDIRECT_URI_MISMATCH: i64 = 20_071;
/// Token endpoint: refreshing is switched off for the app (§2.4).
pub const CODE_REFRESH_DISABLED: i64 = 20_074;
/// `user_info`: the user_access_token is invalid (§6).
pub const CODE_USER_TOKEN_INVALID: i64 = 20_005;
/// General: the tenant_access_token is invalid (§6); drop the cached one and fetch again.
pub const CODE_TENANT_TOKEN_INVALID: i64 = 99_991_663;
/// IM: too many messages to the same user or group (5 QPS per recipient, §4.1).
pub const CODE_IM_RATE_LIMITED: i64 = 230_020;

/// Wait used for a rate-limited answer that lacks `x-ogw-ratelimit-reset`, seconds.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// What a failed call's error allows the caller to do next ([`OpenApiError::retry_advice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAdvice {
    /// Do not send the same request again: it would fail the same way, or it may already
    /// have taken effect (a consumed code or refresh token).
    DoNotRetry,
    /// The platform throttled the call (HTTP 429 / `code` 99991400): send it again after
    /// at least this long (the `x-ogw-ratelimit-reset` header, seconds; 1 s when absent).
    After(Duration),
    /// A transient failure: send it again with backoff (official clients retry token errors
    /// 20050/20072 once, §2.4).
    Backoff,
}

/// An error answer from the platform: a non-2xx HTTP status, a non-zero `code`, or an OAuth
/// `error` field. Texts are the platform's own (they describe, never contain, credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The call, e.g. `"refresh_token grant"`.
    pub call: &'static str,
    /// Whether sending the same request twice has the effect of sending it once.
    pub idempotent: bool,
    /// HTTP status.
    pub status: u16,
    /// Platform `code` (JSON number or numeric string), when present.
    pub code: Option<i64>,
    /// `msg` (OpenAPI envelope), when present.
    pub msg: Option<String>,
    /// OAuth `error` type (token endpoint, device flow), when present.
    pub error: Option<String>,
    /// OAuth `error_description`, when present.
    pub error_description: Option<String>,
    /// The `x-tt-logid` response header, for the platform's support.
    pub log_id: Option<String>,
    /// The `x-ogw-ratelimit-reset` header: seconds until the rate limit resets.
    pub rate_limit_reset: Option<Duration>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: HTTP {}", self.call, self.status)?;
        if let Some(code) = self.code {
            write!(f, ", code {code}")?;
        }
        if let Some(error) = &self.error {
            write!(f, ", error {error}")?;
        }
        if let Some(text) = self.error_description.as_ref().or(self.msg.as_ref()) {
            write!(f, ": {text}")?;
        }
        if let Some(log_id) = &self.log_id {
            write!(f, " (x-tt-logid {log_id})")?;
        }
        Ok(())
    }
}

/// Why an OpenAPI call failed. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenApiError {
    /// The platform answered with an error. Branch on [`ApiFailure::code`] (not on the
    /// `error` text, §2.5); ask [`OpenApiError::retry_advice`] whether to resend and
    /// [`OpenApiError::needs_reauthorization`] whether the grant is dead.
    #[error("{0}")]
    Api(Box<ApiFailure>),
    /// The request could not be completed over the network (connect, send or read failed).
    /// `sent` is false when the connection was never made, so the platform saw nothing.
    /// Resend only idempotent calls, with backoff ([`OpenApiError::retry_advice`]).
    #[error("{call}: network error{}: {detail}", if *sent { "" } else { " before sending" })]
    Transport {
        /// The call.
        call: &'static str,
        /// Whether sending twice is harmless.
        idempotent: bool,
        /// False when no connection was made (the request surely had no effect).
        sent: bool,
        /// The network error's description.
        detail: String,
    },
    /// No complete answer within the configured `openapi.request_timeout_secs`. The
    /// platform may or may not have acted. Resend only idempotent calls.
    #[error("{call}: no answer within {} ms", after.as_millis())]
    Timeout {
        /// The call.
        call: &'static str,
        /// Whether sending twice is harmless.
        idempotent: bool,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A refresh was sent but no answer came (timeout or broken connection). The platform
    /// may have consumed the refresh token and issued a new pair that never reached us.
    /// **Never resend with the same refresh token** (reuse is answered 20073 and may get the
    /// grant revoked): mark the grant uncertain and re-authorize the user if a later check
    /// shows the old token is dead (§2.4).
    #[error("refresh outcome unknown: {detail}; the refresh token must not be reused")]
    RefreshOutcomeUnknown {
        /// What happened (timeout or network error).
        detail: String,
    },
    /// A 2xx answer that does not have the documented shape (a field missing or of the
    /// wrong type). Not retryable; report it with the log id.
    #[error("{call}: unexpected answer (HTTP {status}): {detail}{}", log_id.as_ref().map(|l| format!(" (x-tt-logid {l})")).unwrap_or_default())]
    InvalidResponse {
        /// The call.
        call: &'static str,
        /// HTTP status.
        status: u16,
        /// What did not match (field name and position, never a value).
        detail: String,
        /// The `x-tt-logid` response header.
        log_id: Option<String>,
    },
    /// The request was refused before sending because an argument breaks a documented
    /// limit (e.g. a `uuid` longer than 50 characters). Fix the caller.
    #[error("{call}: invalid request: {reason}")]
    InvalidRequest {
        /// The call.
        call: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl OpenApiError {
    /// Whether and when the same request may be sent again, per the doc's table (§2.5, §7):
    ///
    /// - HTTP 429 or `code` 99991400: [`RetryAdvice::After`] the `x-ogw-ratelimit-reset`
    ///   seconds (the call was not processed);
    /// - `code` 20050 / 20072 (the only retryable token-endpoint errors), 230020 (IM
    ///   per-recipient limit, nothing sent) and 99991663 (tenant token invalid: the
    ///   client has dropped its cached token, so a resend uses a fresh one):
    ///   [`RetryAdvice::Backoff`];
    /// - other HTTP 5xx, network errors and timeouts: [`RetryAdvice::Backoff`] for
    ///   idempotent calls only (and for network errors where nothing was sent);
    /// - [`OpenApiError::RefreshOutcomeUnknown`] and everything else: [`RetryAdvice::DoNotRetry`].
    pub fn retry_advice(&self) -> RetryAdvice {
        match self {
            OpenApiError::Api(f) => {
                if f.status == 429 || f.code == Some(CODE_RATE_LIMITED) {
                    RetryAdvice::After(f.rate_limit_reset.unwrap_or(DEFAULT_RATE_LIMIT_WAIT))
                } else if matches!(
                    f.code,
                    Some(
                        CODE_SERVER_ERROR
                            | CODE_TEMPORARILY_UNAVAILABLE
                            | CODE_IM_RATE_LIMITED
                            | CODE_TENANT_TOKEN_INVALID
                    )
                ) || (f.status >= 500 && f.idempotent)
                {
                    RetryAdvice::Backoff
                } else {
                    RetryAdvice::DoNotRetry
                }
            }
            OpenApiError::Transport {
                idempotent, sent, ..
            } if *idempotent || !*sent => RetryAdvice::Backoff,
            OpenApiError::Timeout { idempotent, .. } if *idempotent => RetryAdvice::Backoff,
            _ => RetryAdvice::DoNotRetry,
        }
    }

    /// True when the grant behind the call is dead and the user must authorize again:
    /// codes 20003/20004/20065 (authorization code not found, expired, used) and
    /// 20026/20037/20064/20073 (refresh token invalid, expired, revoked, reused) (§2.5, §8).
    pub fn needs_reauthorization(&self) -> bool {
        matches!(
            self.code(),
            Some(
                CODE_AUTH_CODE_NOT_FOUND
                    | CODE_AUTH_CODE_EXPIRED
                    | CODE_AUTH_CODE_USED
                    | CODE_REFRESH_TOKEN_INVALID
                    | CODE_REFRESH_TOKEN_EXPIRED
                    | CODE_REFRESH_TOKEN_REVOKED
                    | CODE_REFRESH_TOKEN_USED
            )
        )
    }

    /// The platform `code` of an [`OpenApiError::Api`] answer.
    pub fn code(&self) -> Option<i64> {
        match self {
            OpenApiError::Api(f) => f.code,
            _ => None,
        }
    }

    /// The HTTP status of an answer, when one arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            OpenApiError::Api(f) => Some(f.status),
            OpenApiError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `x-tt-logid` header of the answer, when one arrived with it.
    pub fn log_id(&self) -> Option<&str> {
        match self {
            OpenApiError::Api(f) => f.log_id.as_deref(),
            OpenApiError::InvalidResponse { log_id, .. } => log_id.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<i64>, idempotent: bool) -> OpenApiError {
        OpenApiError::Api(Box::new(ApiFailure {
            call: "test",
            idempotent,
            status,
            code,
            msg: None,
            error: None,
            error_description: None,
            log_id: Some("log-1".into()),
            rate_limit_reset: None,
        }))
    }

    #[test]
    fn retry_advice_follows_the_doc_table() {
        assert_eq!(
            api(500, Some(20050), false).retry_advice(),
            RetryAdvice::Backoff
        );
        assert_eq!(
            api(503, Some(20072), false).retry_advice(),
            RetryAdvice::Backoff
        );
        for code in [20073, 20064, 20037, 20003, 20049, 20071] {
            assert_eq!(
                api(400, Some(code), true).retry_advice(),
                RetryAdvice::DoNotRetry,
                "{code}"
            );
        }
        assert_eq!(api(502, None, true).retry_advice(), RetryAdvice::Backoff);
        assert_eq!(
            api(502, None, false).retry_advice(),
            RetryAdvice::DoNotRetry
        );
        let mut limited = api(429, Some(99991400), false);
        if let OpenApiError::Api(f) = &mut limited {
            f.rate_limit_reset = Some(Duration::from_secs(7));
        }
        assert_eq!(
            limited.retry_advice(),
            RetryAdvice::After(Duration::from_secs(7))
        );
        assert_eq!(
            OpenApiError::RefreshOutcomeUnknown { detail: "x".into() }.retry_advice(),
            RetryAdvice::DoNotRetry
        );
        let timeout = |idempotent| OpenApiError::Timeout {
            call: "t",
            idempotent,
            after: Duration::from_secs(1),
        };
        assert_eq!(timeout(true).retry_advice(), RetryAdvice::Backoff);
        assert_eq!(timeout(false).retry_advice(), RetryAdvice::DoNotRetry);
    }

    #[test]
    fn dead_grants_need_reauthorization() {
        assert!(api(400, Some(20073), false).needs_reauthorization());
        assert!(api(400, Some(20064), false).needs_reauthorization());
        assert!(!api(500, Some(20050), false).needs_reauthorization());
    }

    #[test]
    fn display_names_call_code_and_log_id() {
        let text = api(400, Some(20073), false).to_string();
        assert!(
            text.contains("code 20073") && text.contains("log-1"),
            "{text}"
        );
    }
}
