//! Acting as the user: the OpenAPI proxy (issue 16; `INTERFACE.md`, "Acting as the
//! user").
//!
//! A program calls an OpenAPI route through lark-auth and never touches a token: the
//! [`Forwarder`] injects the user's `user_access_token` (or the app's
//! `tenant_access_token`), sends the call to the configured OpenAPI base URL (never a
//! host named by the request), and streams the platform's answer back unchanged. Front
//! doors: the control API route `ANY /v1/openapi/{open_id}/open-apis/{path}`
//! (`crate::http`); the sidecar door of the official Lark CLI is not built yet.
//!
//! - [`forwarder`]: the [`Forwarder`] (one per HTTP worker thread), its request
//!   ([`ProxyRequest`]), the request-body reader with its limit ([`read_body`]), the
//!   header rules and the token-freshness retry;
//! - [`tenant`]: the [`TenantTokenService`] actor, the app identity's token;
//! - [`scopes`]: the [`ScopeAuthorizer`] actor, authorizations for missing scopes
//!   (99991679) merged per user, at most one per 30 s;
//! - here: the layer's one error enum ([`ProxyError`]), the [`Identity`] a call is made
//!   as, and [`mask_path`] for the audit line.

pub mod forwarder;
pub mod scopes;
pub mod tenant;

use std::time::Duration;

use actix_web::http::StatusCode;

pub use forwarder::{Forwarder, ProxyRequest, ProxySettings, read_body};
pub use scopes::{ScopeAuthorizer, ScopesMissing};
pub use tenant::{GetTenantToken, TenantTokenService};

/// Who a proxied call is made as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The user with this `open_id` (`user_access_token`).
    User(String),
    /// The app itself (`tenant_access_token`; `@app` on the REST door).
    App,
}

impl Identity {
    /// `user` or `app` (audit lines and metric labels).
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::User(_) => "user",
            Identity::App => "app",
        }
    }

    /// The user's `open_id`, `""` for the app.
    pub fn open_id(&self) -> &str {
        match self {
            Identity::User(open_id) => open_id,
            Identity::App => "",
        }
    }
}

/// Why the proxy answered itself instead of passing the platform's answer back. Nothing
/// was sent upstream for any of them except [`ProxyError::Upstream`] /
/// [`ProxyError::UpstreamTimeout`] (sent, no answer). Each maps to one HTTP status and
/// stable error code ([`ProxyError::status`], [`ProxyError::code`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The path is not `/open-apis/…` or has a `.`/`..` segment: `400 invalid_path`.
    #[error("invalid OpenAPI path: {0}")]
    InvalidPath(&'static str),
    /// The request body is larger than `proxy.max_body_bytes`: `413 payload_too_large`.
    #[error("the body is larger than {limit} bytes (proxy.max_body_bytes)")]
    BodyTooLarge {
        /// The limit, bytes.
        limit: u64,
    },
    /// The request body could not be read: `400 invalid_body`.
    #[error("the body could not be read: {0}")]
    BodyRead(String),
    /// The user has no grant: `404 no_grant` (start an authorization).
    #[error("no grant for {0}: start an authorization")]
    NoGrant(String),
    /// The grant needs re-authorization (or was revoked): `409 needs_reauth`.
    #[error("the grant of {open_id} needs re-authorization ({why})")]
    NeedsReauth {
        /// The user.
        open_id: String,
        /// Why, from `get_token`.
        why: String,
    },
    /// No valid token now, one later (a refresh failed and its backoff runs):
    /// `503 refresh_failed` with `Retry-After`.
    #[error("refresh failed; retry in {} s", retry_after.as_secs().max(1))]
    RefreshFailed {
        /// Until the next refresh attempt is allowed.
        retry_after: Duration,
    },
    /// The token could not be had for another reason (vault or tenant token endpoint
    /// down): `503 token_unavailable`.
    #[error("no token available: {0}")]
    TokenUnavailable(String),
    /// The platform did not answer within `proxy.upstream_timeout_secs`:
    /// `504 upstream_timeout`.
    #[error("the OpenAPI did not answer in time")]
    UpstreamTimeout,
    /// The platform could not be reached: `502 upstream_unreachable`.
    #[error("the OpenAPI could not be reached: {0}")]
    Upstream(String),
    /// This front was started without the proxy or its actors stopped: `503 unavailable`.
    #[error("the OpenAPI proxy is not running")]
    Unavailable,
}

impl ProxyError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidPath(_) | ProxyError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoGrant(_) => StatusCode::NOT_FOUND,
            ProxyError::NeedsReauth { .. } => StatusCode::CONFLICT,
            ProxyError::RefreshFailed { .. }
            | ProxyError::TokenUnavailable(_)
            | ProxyError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable error code of the JSON answer (`{"error": code, "message": …}`).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::BodyTooLarge { .. } => "payload_too_large",
            ProxyError::BodyRead(_) => "invalid_body",
            ProxyError::NoGrant(_) => "no_grant",
            ProxyError::NeedsReauth { .. } => "needs_reauth",
            ProxyError::RefreshFailed { .. } => "refresh_failed",
            ProxyError::TokenUnavailable(_) => "token_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::Upstream(_) => "upstream_unreachable",
            ProxyError::Unavailable => "unavailable",
        }
    }
}

/// The path of an OpenAPI call with its id segments replaced by `:id`, for the audit
/// line: a segment is an id when it holds a digit and is not a version (`v1`, `v2`…), or
/// has a platform id prefix (`ou_`, `on_`, `oc_`, `om_`, `cli_`…: letters then `_`).
/// The query is dropped.
///
/// ```
/// use lark_auth::proxy::mask_path;
///
/// assert_eq!(
///     mask_path("/open-apis/im/v1/messages/om_dc13264520392913993dd051dba21dcf?x=1"),
///     "/open-apis/im/v1/messages/:id"
/// );
/// assert_eq!(mask_path("/open-apis/authen/v1/user_info"), "/open-apis/authen/v1/user_info");
/// ```
pub fn mask_path(path_and_query: &str) -> String {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    path.split('/')
        .map(|segment| {
            let version = segment.len() > 1
                && segment.starts_with('v')
                && segment[1..].bytes().all(|b| b.is_ascii_digit());
            let prefixed = matches!(
                segment.split_once('_'),
                Some((prefix, rest)) if (2..=4).contains(&prefix.len())
                    && prefix.bytes().all(|b| b.is_ascii_lowercase())
                    && rest.len() >= 8
            );
            let digits = segment.bytes().any(|b| b.is_ascii_digit());
            if (digits && !version) || prefixed {
                ":id"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks the path of a proxied call: `/open-apis/…`, with no `.` or `..` segment (plain
/// or percent-encoded), so the call cannot leave the OpenAPI tree of the base URL.
///
/// # Errors
/// [`ProxyError::InvalidPath`].
pub fn check_path(path: &str) -> Result<(), ProxyError> {
    if !path.starts_with("/open-apis/") {
        return Err(ProxyError::InvalidPath("must start with /open-apis/"));
    }
    for segment in path.split('/') {
        let lower = segment.to_ascii_lowercase().replace("%2e", ".");
        if lower == "." || lower == ".." {
            return Err(ProxyError::InvalidPath("`.` and `..` segments are refused"));
        }
        if lower.contains("%2f") || lower.contains("%5c") || segment.contains('\\') {
            return Err(ProxyError::InvalidPath(
                "encoded path separators are refused",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_openapi_tree_are_refused() {
        assert!(check_path("/open-apis/im/v1/messages").is_ok());
        assert!(check_path("/open-apis/drive/v1/medias/a.b/download").is_ok());
        for bad in [
            "/callback/ws/endpoint",
            "/open-apis/../callback/ws/endpoint",
            "/open-apis/%2e%2E/callback",
            "/open-apis/./x",
            "/open-apis/a%2Fb",
            "/open-apis/a%5c..",
            "/open-apisx/y",
        ] {
            assert!(
                matches!(check_path(bad), Err(ProxyError::InvalidPath(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_masked_and_route_words_kept() {
        for (path, masked) in [
            (
                "/open-apis/drive/v1/medias/sandbox_bytes_42/download?x=ou_1",
                "/open-apis/drive/v1/medias/:id/download",
            ),
            (
                "/open-apis/contact/v3/users/ou_abcdefgh",
                "/open-apis/contact/v3/users/:id",
            ),
            (
                "/open-apis/auth/v3/tenant_access_token/internal",
                "/open-apis/auth/v3/tenant_access_token/internal",
            ),
            (
                "/open-apis/drive/v1/medias/upload_all",
                "/open-apis/drive/v1/medias/upload_all",
            ),
        ] {
            assert_eq!(mask_path(path), masked);
        }
    }

    #[test]
    fn every_error_has_its_status_and_code() {
        assert_eq!(ProxyError::NoGrant("ou_x".into()).status().as_u16(), 404);
        assert_eq!(ProxyError::NoGrant("ou_x".into()).code(), "no_grant");
        let reauth = ProxyError::NeedsReauth {
            open_id: "ou_x".into(),
            why: "revoked".into(),
        };
        assert_eq!(
            (reauth.status().as_u16(), reauth.code()),
            (409, "needs_reauth")
        );
        let large = ProxyError::BodyTooLarge { limit: 1 };
        assert_eq!(
            (large.status().as_u16(), large.code()),
            (413, "payload_too_large")
        );
    }
}
