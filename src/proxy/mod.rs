//! Acting as the user: the OpenAPI proxy (issue 16; `INTERFACE.md`, "Acting as the
//! user").
//!
//! A program calls an OpenAPI route through lark-auth and never touches a token: the
//! [`Forwarder`] injects the user's `user_access_token` (or the app's
//! `tenant_access_token`), sends the call to the configured OpenAPI base URL (never a
//! host named by the request), and streams the platform's answer back unchanged. Front
//! doors: the control API route `ANY /v1/openapi/{open_id}/open-apis/{path}`
//! (`crate::http`), and the auth-proxy ("sidecar") protocol v1 of the official Lark CLI
//! on its own listener ([`sidecar`]).
//!
//! - [`forwarder`]: the [`Forwarder`] (one per HTTP worker thread), its request
//!   ([`ProxyRequest`]), the request-body reader with its limit ([`read_body`]), the
//!   header rules and the token-freshness retry;
//! - [`tenant`]: the [`TenantTokenService`] actor, the app identity's token;
//! - [`sidecar`]: the sidecar door (request verification in the protocol's order, the
//!   clients and their keys, the target host mapping, its listener);
//! - [`scopes`]: the [`ScopeAuthorizer`] actor, authorizations for missing scopes
//!   (99991679) merged per user, at most one per 30 s;
//! - here: the layer's one error enum ([`ProxyError`]), the [`Identity`] a call is made
//!   as, and [`mask_path`] for the audit line.

pub mod forwarder;
pub mod scopes;
pub mod sidecar;
pub mod tenant;

use std::time::Duration;

use actix_web::http::StatusCode;

pub use forwarder::{AuthHeader, Forwarder, ProxyRequest, ProxySettings, read_body};
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
    /// Sidecar door: `X-Lark-Proxy-Version` is not `v1`: `400 unsupported_version`.
    #[error("unsupported X-Lark-Proxy-Version `{0}`: this proxy speaks v1")]
    UnsupportedVersion(String),
    /// Sidecar door: a required protocol header is absent: `400 missing_header`.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// Sidecar door: `X-Lark-Proxy-Timestamp` is not unix seconds within 60 s of now:
    /// `401 invalid_timestamp`.
    #[error("X-Lark-Proxy-Timestamp {0}")]
    InvalidTimestamp(&'static str),
    /// Sidecar door: the body's SHA-256 is not `X-Lark-Body-SHA256`: `400
    /// body_sha256_mismatch`.
    #[error("the body's SHA-256 does not match X-Lark-Body-SHA256")]
    BodyHashMismatch,
    /// Sidecar door: `X-Lark-Proxy-Target` is not an https origin: `403 invalid_target`.
    #[error("invalid X-Lark-Proxy-Target: {0}")]
    InvalidTarget(&'static str),
    /// Sidecar door: no client's key verifies `X-Lark-Proxy-Signature`: `401
    /// invalid_signature`.
    #[error("HMAC verification failed: no client key verifies the signature")]
    InvalidSignature,
    /// Sidecar door: the target host is not one of the brand's open, accounts and mcp
    /// hosts: `403 target_host_not_allowed`.
    #[error("target host not allowed: {0}")]
    HostNotAllowed(String),
    /// Sidecar door: the client may not ask for this identity (`identities` of its
    /// `[[sidecar.clients]]` entry, or not `user` / `bot`): `403 identity_not_allowed`.
    #[error("identity `{identity}` not allowed for client {client}")]
    IdentityNotAllowed {
        /// The client's name.
        client: String,
        /// The identity asked for.
        identity: String,
    },
    /// Sidecar door: a client bound to no user asked for the `user` identity: `403
    /// no_user_bound` (never another user's token).
    #[error(
        "client {0} is bound to no user (its open_id is \"\"): only the bot identity is served"
    )]
    NoUserBound(String),
    /// Sidecar door: `X-Lark-Proxy-Auth-Header` is not `Authorization`, `X-Lark-MCP-UAT`
    /// (with `user`) or `X-Lark-MCP-TAT` (with `bot`): `403 auth_header_not_allowed`.
    #[error("auth-header not allowed: {0}")]
    AuthHeaderNotAllowed(String),
}

impl ProxyError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidPath(_)
            | ProxyError::BodyRead(_)
            | ProxyError::UnsupportedVersion(_)
            | ProxyError::MissingHeader(_)
            | ProxyError::BodyHashMismatch => StatusCode::BAD_REQUEST,
            ProxyError::InvalidTimestamp(_) | ProxyError::InvalidSignature => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::InvalidTarget(_)
            | ProxyError::HostNotAllowed(_)
            | ProxyError::IdentityNotAllowed { .. }
            | ProxyError::NoUserBound(_)
            | ProxyError::AuthHeaderNotAllowed(_) => StatusCode::FORBIDDEN,
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
            ProxyError::UnsupportedVersion(_) => "unsupported_version",
            ProxyError::MissingHeader(_) => "missing_header",
            ProxyError::InvalidTimestamp(_) => "invalid_timestamp",
            ProxyError::BodyHashMismatch => "body_sha256_mismatch",
            ProxyError::InvalidTarget(_) => "invalid_target",
            ProxyError::InvalidSignature => "invalid_signature",
            ProxyError::HostNotAllowed(_) => "target_host_not_allowed",
            ProxyError::IdentityNotAllowed { .. } => "identity_not_allowed",
            ProxyError::NoUserBound(_) => "no_user_bound",
            ProxyError::AuthHeaderNotAllowed(_) => "auth_header_not_allowed",
        }
    }

    /// The JSON answer: `{"error": code, "message": text}` with [`ProxyError::status`];
    /// `503 refresh_failed` adds `Retry-After` and `retry_after_secs`.
    pub fn to_response(&self) -> actix_web::HttpResponse {
        let mut body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
        });
        let mut answer = actix_web::HttpResponse::build(self.status());
        if let ProxyError::RefreshFailed { retry_after } = self {
            let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
            answer.insert_header(("Retry-After", secs.to_string()));
            body["retry_after_secs"] = serde_json::Value::from(secs);
        }
        answer.json(body)
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
    check_segments(path)
}

/// Checks that an absolute path has no `.` or `..` segment and no encoded separator (the
/// sidecar door's calls to the accounts and MCP hosts, which are not under
/// `/open-apis/`).
///
/// # Errors
/// [`ProxyError::InvalidPath`].
pub fn check_segments(path: &str) -> Result<(), ProxyError> {
    if !path.starts_with('/') {
        return Err(ProxyError::InvalidPath("must start with /"));
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
