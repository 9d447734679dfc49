//! What `get_token` answers: an [`AccessToken`], or a [`GetTokenError`] naming what the
//! caller should do.

use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;
use crate::vault::VaultError;

/// An access token handed to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The `user_access_token`.
    pub token: Secret<String>,
    /// When it expires, unix ms (at least the margin after the call).
    pub expires_ms: u64,
}

/// Why `get_token` gave no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GetTokenError {
    /// The user has no grant: start an authorization.
    #[error("no grant for this user: authorization needed")]
    NoGrant,
    /// The grant cannot be refreshed any more (the code says why): ask the user to
    /// authorize again (one card, not a loop).
    #[error("the grant needs re-authorization (code {code:?})")]
    NeedsReauth {
        /// The platform code that ended the grant, if any.
        code: Option<u32>,
    },
    /// The grant was revoked: authorize again if the user wants.
    #[error("the grant was revoked")]
    Revoked,
    /// A refresh was sent and its answer lost: the grant is `refresh_uncertain`, its
    /// refresh token will not be sent again, and it will need re-authorization.
    #[error("the refresh outcome is unknown; the grant is refresh_uncertain")]
    RefreshOutcomeUnknown,
    /// The refresh failed with a retryable error (just now, or earlier and its backoff
    /// has not elapsed) and no stored access token is valid beyond the margin; the grant
    /// is `refresh_failed`. Retry after `retry_after` (the scheduler retries then too).
    #[error("refresh failed, retryable (code {code:?}); next attempt in {} s", retry_after.as_secs_f64().ceil())]
    RefreshFailed {
        /// The platform code, if any.
        code: Option<u32>,
        /// How long until the next refresh attempt is allowed (duration; zero: now).
        retry_after: Duration,
    },
    /// The vault failed (see the inner error for what to do).
    #[error("vault error: {0}")]
    Vault(Arc<VaultError>),
    /// The vault actor is not running (shutting down).
    #[error("the vault actor is not running")]
    VaultUnavailable,
    /// The record kept changing under the flight (other writers); retry.
    #[error("the grant kept changing during the refresh; retry")]
    Contended,
}

impl From<VaultError> for GetTokenError {
    fn from(e: VaultError) -> Self {
        GetTokenError::Vault(Arc::new(e))
    }
}

impl From<actix::MailboxError> for GetTokenError {
    fn from(_: actix::MailboxError) -> Self {
        GetTokenError::VaultUnavailable
    }
}
