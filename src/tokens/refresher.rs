//! The refresh seam and its production implementation.
//!
//! [`RefreshGrant`] is the seam to the token endpoint ([`TokenSource`](super::TokenSource)
//! refreshes through it; other token endpoints or test harnesses can be plugged in).
//! [`OpenApiRefresher`] is the production [`RefreshGrant`], the OpenAPI client's refresh
//! grant with its errors mapped onto [`RefreshFailure`].
//!
//! Mapping (`lark-openapi-auth.md` §2.4, §2.5), see [`refresh_failure_of`]:
//!
//! | OpenAPI error | RefreshFailure |
//! |---|---|
//! | code 20026 / 20037 / 20064 / 20073 / 20074, whatever the HTTP status | `NeedsReauth { code }` |
//! | code 20050 / 20072; rate limited (HTTP 429, or code 99991400 on 429 or 400, §7) | `Retryable { code }` |
//! | any other code on an HTTP 5xx answer; HTTP 5xx without a code (a gateway's page) | `Retryable { code }` |
//! | any other code on a 4xx answer (a request the platform refused) | `NeedsReauth { code }` |
//! | network error before anything was sent, HTTP 4xx without a code, invalid request | `Retryable { code: None }` |
//! | `RefreshOutcomeUnknown` (timeout, connection lost after sending), malformed 2xx answer | `OutcomeUnknown` |
//!
//! A 5xx is a server error, not a verdict on the refresh token: the platform documents its
//! own (20050, 20072) as "retry", and retrying one that did consume the token can only get
//! 20073 (the grant then needs re-authorization, as an `OutcomeUnknown` would), so
//! retrying loses nothing and keeps the grant when the error was transient. The last row
//! stays conservative: whenever no answer came, the token is never sent again.

use std::future::Future;
use std::time::Duration;

use crate::openapi::{OpenApiClient, OpenApiError};
use crate::secret::Secret;

/// The answer of a successful refresh (`grant_type=refresh_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTokens {
    /// The new `user_access_token`.
    pub access_token: Secret<String>,
    /// Its lifetime (`expires_in`, seconds on the wire), counted from when the request
    /// was sent.
    pub access_expires_in: Duration,
    /// The new single-use `refresh_token` (the one sent is now dead).
    pub refresh_token: Secret<String>,
    /// Its lifetime (`refresh_token_expires_in`), counted from when the request was sent.
    pub refresh_expires_in: Duration,
    /// The scopes the answer names, if it names them (else the stored ones are kept).
    pub scopes: Option<Vec<String>>,
}

/// Why a refresh did not produce tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshFailure {
    /// The platform said the refresh token was not consumed and the call may be retried
    /// (20050, 20072, another 5xx answer, rate limiting 429 or 99991400, a connection that
    /// failed before the request was sent).
    #[error("retryable refresh failure (code {code:?})")]
    Retryable {
        /// The platform's code, if one was received.
        code: Option<u32>,
    },
    /// The refresh token is dead (20026, 20037, 20064, 20073, 20074): the user must
    /// authorize again.
    #[error("refresh token refused with code {code}: re-authorization needed")]
    NeedsReauth {
        /// The platform's code.
        code: u32,
    },
    /// The request may have reached the platform but no answer came (timeout, connection
    /// lost after sending): the refresh token may be consumed.
    #[error("refresh outcome unknown (no answer)")]
    OutcomeUnknown,
}

impl RefreshFailure {
    /// Classifies a platform error code of the refresh grant answered with a 4xx status
    /// (`lark-openapi-auth.md` §2.5; see [`refresh_failure_of`]
    /// for 5xx answers and rate limiting):
    /// 20026/20037/20064/20073/20074 end the grant; 20050/20072 are retryable; any other
    /// code is a request the platform refused for a reason a retry will not fix, so it
    /// ends the grant too.
    pub fn from_error_code(code: u32) -> RefreshFailure {
        match code {
            20050 | 20072 => RefreshFailure::Retryable { code: Some(code) },
            _ => RefreshFailure::NeedsReauth { code },
        }
    }
}

/// The seam to the token endpoint: exchange a refresh token for a new pair. Implemented by
/// the OpenAPI client; must time out on its own and report a lost answer as
/// [`RefreshFailure::OutcomeUnknown`].
pub trait RefreshGrant: 'static {
    /// Sends one refresh request with `refresh_token`.
    fn refresh(
        &self,
        refresh_token: Secret<String>,
    ) -> impl Future<Output = Result<NewTokens, RefreshFailure>>;
}

/// Platform `code` of rate limiting (§7): nothing was processed.
const CODE_RATE_LIMITED: i64 = 99_991_400;

/// Refreshes through [`OpenApiClient::refresh_user_token`]. Lives on the System's thread
/// (the client is not `Send`). Each call is bounded by the client's
/// `openapi.request_timeout_secs`.
#[derive(Clone)]
pub struct OpenApiRefresher {
    client: OpenApiClient,
}

impl OpenApiRefresher {
    /// A refresher sending through `client`.
    pub fn new(client: OpenApiClient) -> OpenApiRefresher {
        OpenApiRefresher { client }
    }

    /// The client underneath.
    pub fn client(&self) -> &OpenApiClient {
        &self.client
    }
}

/// Codes of the refresh grant that end the grant whatever the HTTP status (§2.5).
const TERMINAL_CODES: [u32; 5] = [20026, 20037, 20064, 20073, 20074];

/// Classifies a failed refresh grant; see the module docs for the table.
pub fn refresh_failure_of(error: &OpenApiError) -> RefreshFailure {
    match error {
        OpenApiError::Api(f) => match f.code {
            Some(CODE_RATE_LIMITED) => RefreshFailure::Retryable {
                code: Some(99_991_400),
            },
            Some(code) => match u32::try_from(code) {
                Ok(code) if TERMINAL_CODES.contains(&code) => RefreshFailure::NeedsReauth { code },
                Ok(code) if f.status >= 500 || f.status == 429 => {
                    RefreshFailure::Retryable { code: Some(code) }
                }
                Ok(code) => RefreshFailure::from_error_code(code),
                Err(_) if f.status >= 500 || f.status == 429 => {
                    RefreshFailure::Retryable { code: None }
                }
                // A code outside the documented range: the platform refused the request.
                Err(_) => RefreshFailure::NeedsReauth { code: 0 },
            },
            None => RefreshFailure::Retryable { code: None },
        },
        OpenApiError::Transport { sent: false, .. } | OpenApiError::InvalidRequest { .. } => {
            RefreshFailure::Retryable { code: None }
        }
        OpenApiError::Transport { sent: true, .. }
        | OpenApiError::Timeout { .. }
        | OpenApiError::RefreshOutcomeUnknown { .. }
        | OpenApiError::InvalidResponse { .. } => RefreshFailure::OutcomeUnknown,
    }
}

impl RefreshGrant for OpenApiRefresher {
    /// Sends one refresh grant. An answer without a refresh token (`offline_access` no
    /// longer granted) keeps the new access token and stores an empty refresh token with
    /// a lifetime of 0 s, so the grant needs re-authorization once the access token runs
    /// out.
    async fn refresh(&self, refresh_token: Secret<String>) -> Result<NewTokens, RefreshFailure> {
        match self.client.refresh_user_token(&refresh_token).await {
            Ok(grant) => {
                let scopes = (!grant.scope.is_empty())
                    .then(|| grant.scope.split_whitespace().map(str::to_string).collect());
                Ok(NewTokens {
                    access_token: grant.access_token,
                    access_expires_in: grant.expires_in,
                    refresh_expires_in: grant.refresh_token_expires_in.unwrap_or_default(),
                    refresh_token: grant.refresh_token.unwrap_or_default(),
                    scopes,
                })
            }
            Err(e) => {
                let failure = refresh_failure_of(&e);
                tracing::info!(error = %e, ?failure, "refresh grant failed");
                Err(failure)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::openapi::ApiFailure;

    fn api(status: u16, code: Option<i64>) -> OpenApiError {
        OpenApiError::Api(Box::new(ApiFailure {
            call: "refresh_token grant",
            idempotent: false,
            status,
            code,
            msg: None,
            error: None,
            error_description: None,
            log_id: None,
            rate_limit_reset: None,
        }))
    }

    #[test]
    fn the_issue_table() {
        for code in [20073, 20064, 20037, 20026, 20074] {
            assert_eq!(
                refresh_failure_of(&api(400, Some(code))),
                RefreshFailure::NeedsReauth { code: code as u32 }
            );
        }
        for code in [20050, 20072] {
            assert_eq!(
                refresh_failure_of(&api(503, Some(code))),
                RefreshFailure::Retryable {
                    code: Some(code as u32)
                }
            );
        }
        assert_eq!(
            refresh_failure_of(&api(429, Some(99_991_400))),
            RefreshFailure::Retryable {
                code: Some(99_991_400)
            }
        );
        assert_eq!(
            refresh_failure_of(&OpenApiError::Transport {
                call: "x",
                idempotent: false,
                sent: false,
                detail: "refused".into()
            }),
            RefreshFailure::Retryable { code: None }
        );
        assert_eq!(
            refresh_failure_of(&OpenApiError::RefreshOutcomeUnknown {
                detail: "timeout".into()
            }),
            RefreshFailure::OutcomeUnknown
        );
        assert_eq!(
            refresh_failure_of(&OpenApiError::Timeout {
                call: "x",
                idempotent: false,
                after: Duration::from_secs(1)
            }),
            RefreshFailure::OutcomeUnknown
        );
        // Rate limiting, old style (HTTP 400) and new (429, with or without the code).
        for status in [400, 429] {
            assert_eq!(
                refresh_failure_of(&api(status, Some(99_991_400))),
                RefreshFailure::Retryable {
                    code: Some(99_991_400)
                }
            );
        }
        assert_eq!(
            refresh_failure_of(&api(429, None)),
            RefreshFailure::Retryable { code: None }
        );
        // Any 5xx is a server error: retried, never the end of the grant...
        for status in [500, 502, 503, 504] {
            assert_eq!(
                refresh_failure_of(&api(status, None)),
                RefreshFailure::Retryable { code: None }
            );
        }
        assert_eq!(
            refresh_failure_of(&api(500, Some(12_345))),
            RefreshFailure::Retryable { code: Some(12_345) }
        );
        // ...unless it names a code that kills the refresh token.
        assert_eq!(
            refresh_failure_of(&api(500, Some(20_064))),
            RefreshFailure::NeedsReauth { code: 20_064 }
        );
        // A 4xx with an unknown code is a refusal.
        assert_eq!(
            refresh_failure_of(&api(400, Some(20_066))),
            RefreshFailure::NeedsReauth { code: 20_066 }
        );
        assert_eq!(
            refresh_failure_of(&api(404, None)),
            RefreshFailure::Retryable { code: None }
        );
    }
}
