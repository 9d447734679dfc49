//! The forwarder behind every door of the OpenAPI proxy.
//!
//! One [`Forwarder`] per HTTP worker thread (it holds an awc client, which is `!Send`),
//! built from the `Send` [`ProxySettings`]. For each [`ProxyRequest`]:
//!
//! 1. the token of the [`Identity`]: `get_token` through the `TokenService` (single
//!    flight) for a user — no grant → [`ProxyError::NoGrant`], `needs_reauth` / revoked →
//!    [`ProxyError::NeedsReauth`], nothing sent — or the cached `tenant_access_token` for
//!    the app;
//! 2. the request goes to `{base}{path and query}` (the configured `open_base_url`, or the
//!    configured base the sidecar door mapped the target host onto: never a host from
//!    the request) with the caller's headers minus its own auth and proxy headers
//!    ([`FORWARD_DROPPED`], `x-lark-proxy-*`) and the hop-by-hop ones, plus the token in
//!    its [`AuthHeader`] (`Authorization: Bearer <token>`, or the bare token in
//!    `X-Lark-MCP-UAT` / `X-Lark-MCP-TAT`); the body is the one buffered by
//!    [`read_body`];
//! 3. the answer streams back as it arrives: status and headers (but hop-by-hop ones)
//!    unchanged, the body never buffered — except a small JSON error answer (status ≥
//!    400, JSON content type, at most [`PEEK_LIMIT`] bytes), which is read to find the
//!    platform `code`: 99991668 / 99991677 for a user (the grant is refreshed once,
//!    `RefreshRejected`, same single flight as `get_token`) or 99991663 for the app (the
//!    tenant token is renewed) lead to **one** retry with the new token; any other answer,
//!    and the answer to the retry, is passed back as it is. A 99991679 (missing user
//!    scope) answer is passed back too, with the `X-Lark-Auth-Session` header naming the
//!    authorization the [`ScopeAuthorizer`] started for the missing scopes (when on).
//!
//! Every request ends with one audit line (target `lark_auth::audit`: door, caller,
//! identity, open_id, method, path with ids masked, status, upstream latency, retried —
//! never a token or a body) and its metrics.

use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use super::scopes::{ScopeAuthorizer, ScopesMissing};
use super::tenant::{GetTenantToken, TenantTokenService};
use super::{Identity, ProxyError, mask_path};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::tokens::{GetToken, GetTokenError, RefreshRejected, TokenService};

/// Largest error answer read to find its platform `code`, bytes (64 KiB; the platform's
/// error bodies are well under 1 KiB).
pub const PEEK_LIMIT: usize = 64 * 1024;

/// Largest slice of a held request body written upstream at once, bytes (64 KiB).
pub const SEND_SLICE: usize = 64 * 1024;

/// How far past `proxy.max_body_bytes` a body is still read (and dropped) before `413`
/// is answered, bytes (8 MiB): a client that sends the whole body before reading the
/// answer gets the `413` instead of a reset connection. A declared `Content-Length`
/// beyond the limit plus this is refused at once.
pub const DRAIN_LIMIT: u64 = 8 << 20;

/// Request headers of the caller never forwarded (its own credentials for lark-auth, the
/// sidecar protocol's headers, and what the forwarder sets itself); `x-lark-proxy-*` and
/// the hop-by-hop headers ([`HOP_BY_HOP`]) are dropped too. `Accept-Encoding` is
/// replaced by `identity` (awc's own, built without decoders) so the platform answers
/// uncompressed: a token-expired error must be readable for the retry (an answer without
/// content coding is valid for any `Accept-Encoding`).
pub const FORWARD_DROPPED: [&str; 9] = [
    "authorization",
    "accept-encoding",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "x-lark-body-sha256",
    "x-lark-mcp-uat",
    "x-lark-mcp-tat",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped both ways, with those the `Connection`
/// header names.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Platform codes that mean "this user token is invalid / expired" (§6).
pub const USER_TOKEN_CODES: [i64; 2] = [99_991_668, 99_991_677];
/// Platform code that means "this tenant token is invalid" (§6).
pub const TENANT_TOKEN_CODE: i64 = 99_991_663;
/// Platform code that means "the user has not granted a scope this API needs" (§6).
pub const SCOPE_CODE: i64 = 99_991_679;
/// Answer header naming the authorization started for missing scopes (lowercase).
pub const AUTH_SESSION_HEADER: &str = "x-lark-auth-session";

/// What every worker's [`Forwarder`] is built from (`Send`, cloned per worker).
#[derive(Clone)]
pub struct ProxySettings {
    /// `endpoints.open_base_url`, without a trailing `/`.
    pub open_base_url: String,
    /// `proxy.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `proxy.upstream_timeout_secs`.
    pub upstream_timeout: Duration,
    /// The user tokens.
    pub tokens: Addr<TokenService>,
    /// The app's tenant token.
    pub tenant: Addr<TenantTokenService>,
    /// Where requests, latencies and retries are counted.
    pub metrics: Metrics,
    /// TLS for https base URLs.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// Starts authorizations for missing scopes (`proxy.scope_authorization`); `None`:
    /// off, 99991679 answers are only passed back.
    pub scopes: Option<Addr<ScopeAuthorizer>>,
}

impl ProxySettings {
    /// Settings from the configuration (`[endpoints] open_base_url`, `[proxy]`) and the
    /// running actors.
    ///
    /// # Errors
    /// `TokenUnavailable` if TLS cannot be set up (not expected).
    pub fn new(
        config: &crate::config::Config,
        tokens: Addr<TokenService>,
        tenant: Addr<TenantTokenService>,
        metrics: Metrics,
    ) -> Result<ProxySettings, ProxyError> {
        let tls = crate::http_client::tls_config()
            .map_err(|e| ProxyError::TokenUnavailable(format!("TLS setup failed: {e}")))?;
        Ok(ProxySettings {
            open_base_url: config.open_base_url().trim_end_matches('/').to_string(),
            max_body_bytes: config.proxy.max_body_bytes,
            upstream_timeout: config.proxy.upstream_timeout,
            tokens,
            tenant,
            metrics,
            tls,
            scopes: None,
        })
    }
}

/// Where the token goes in the forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthHeader {
    /// `Authorization: Bearer <token>` (the REST door always; the sidecar door's
    /// `X-Lark-Proxy-Auth-Header: Authorization`).
    #[default]
    Authorization,
    /// `X-Lark-MCP-UAT: <token>` (the bare user token, MCP calls).
    McpUat,
    /// `X-Lark-MCP-TAT: <token>` (the bare tenant token, MCP calls).
    McpTat,
}

impl AuthHeader {
    /// The header's wire name (as the sidecar protocol spells it).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthHeader::Authorization => "Authorization",
            AuthHeader::McpUat => "X-Lark-MCP-UAT",
            AuthHeader::McpTat => "X-Lark-MCP-TAT",
        }
    }

    /// The allowed header named `name` (exact spelling of the protocol); `None` for any
    /// other.
    pub fn parse(name: &str) -> Option<AuthHeader> {
        [
            AuthHeader::Authorization,
            AuthHeader::McpUat,
            AuthHeader::McpTat,
        ]
        .into_iter()
        .find(|h| h.as_str() == name)
    }
}

/// One call to forward.
#[derive(Debug)]
pub struct ProxyRequest {
    /// The door it came through: `rest` (control API) or `sidecar`.
    pub door: &'static str,
    /// Who called (the sidecar client's name; `api_token` for the control API).
    pub caller: String,
    /// Whose token is injected.
    pub identity: Identity,
    /// HTTP method.
    pub method: Method,
    /// The base URL it goes to, without a trailing `/` (a configured one, never a host
    /// named by the caller); `None`: `endpoints.open_base_url`.
    pub base_url: Option<String>,
    /// Where the token goes.
    pub auth_header: AuthHeader,
    /// `/open-apis/…` with the query, as received (checked by
    /// [`check_path`](super::check_path)).
    pub path_and_query: String,
    /// The caller's headers (filtered here before sending).
    pub headers: HeaderMap,
    /// The whole body (from [`read_body`]).
    pub body: Bytes,
}

/// Reads a request body into memory, at most `limit` bytes.
///
/// # Errors
/// [`ProxyError::BodyTooLarge`] when the declared `Content-Length` or the bytes received
/// exceed `limit` (a body up to [`DRAIN_LIMIT`] past it is read and dropped first);
/// [`ProxyError::BodyRead`] when the stream fails.
pub async fn read_body(
    headers: &HeaderMap,
    mut payload: web::Payload,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_LIMIT)) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    let mut seen: u64 = 0;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ProxyError::BodyRead(e.to_string()))?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit.saturating_add(DRAIN_LIMIT) {
            break;
        }
        if seen <= limit {
            body.extend_from_slice(&chunk);
        }
    }
    if seen > limit {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    Ok(body.freeze())
}

/// Forwards calls for one HTTP worker thread (see the module docs).
pub struct Forwarder {
    settings: ProxySettings,
    http: awc::Client,
}

/// What happened upstream, for the audit line and the metrics.
#[derive(Default)]
struct Trace {
    upstream: Duration,
    retried: bool,
}

/// A token to inject.
type Token = Secret<String>;

impl Forwarder {
    /// A forwarder for the calling thread (build it on the worker that uses it).
    pub fn new(settings: ProxySettings) -> Forwarder {
        let timeout = settings.upstream_timeout;
        let connector = awc::Connector::new()
            .max_http_version(awc::http::Version::HTTP_11)
            .rustls_0_23(settings.tls.clone())
            .timeout(timeout)
            .handshake_timeout(timeout);
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(timeout)
            .no_default_headers()
            .disable_redirects()
            .finish();
        Forwarder { settings, http }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Forwards `request` and returns the answer to give the caller: the platform's
    /// (streamed), or the proxy's own refusal.
    ///
    /// # Errors
    /// [`ProxyError`] when the proxy answers itself (no grant, needs re-authorization,
    /// no token, upstream unreachable or silent).
    pub async fn forward(&self, request: ProxyRequest) -> Result<HttpResponse, ProxyError> {
        let mut trace = Trace::default();
        let result = self.forward_traced(&request, &mut trace).await;
        let status = match &result {
            Ok(answer) => answer.status(),
            Err(e) => e.status(),
        };
        let upstream_ms = trace.upstream.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "lark_auth::audit",
            door = request.door,
            caller = %request.caller,
            identity = request.identity.kind(),
            open_id = request.identity.open_id(),
            method = %request.method,
            path = %mask_path(&request.path_and_query),
            status = status.as_u16(),
            upstream_ms = (upstream_ms * 1000.0).round() / 1000.0,
            retried = trace.retried,
            "openapi call proxied"
        );
        self.settings.metrics.proxy_request(
            request.door,
            request.identity.kind(),
            status.as_u16(),
            trace.upstream.as_secs_f64(),
            trace.retried,
        );
        result
    }

    async fn forward_traced(
        &self,
        request: &ProxyRequest,
        trace: &mut Trace,
    ) -> Result<HttpResponse, ProxyError> {
        let mut token = self.token(&request.identity, None).await?;
        loop {
            let sent = Instant::now();
            let answer = self.send(request, &token).await;
            trace.upstream += sent.elapsed();
            let answer = answer?;
            if !peekable(&answer) {
                return Ok(stream_back(answer, None));
            }
            let (answer, peeked) = peek(answer).await;
            let code = match &peeked {
                Peeked::Whole(body) => platform_code(body),
                Peeked::Partial(_) => None,
            };
            let retry = !trace.retried
                && code.is_some_and(|code| match request.identity {
                    Identity::User(_) => USER_TOKEN_CODES.contains(&code),
                    Identity::App => code == TENANT_TOKEN_CODE,
                });
            if retry {
                match self.token(&request.identity, Some(&token)).await {
                    Ok(fresh) if fresh != token => {
                        token = fresh;
                        trace.retried = true;
                        continue;
                    }
                    // The grant ended: say so rather than pass the platform's answer on.
                    Err(e @ ProxyError::NeedsReauth { .. }) => return Err(e),
                    // No other token now: the platform's answer is passed back.
                    _ => {}
                }
            }
            let session = match (&request.identity, &peeked, &self.settings.scopes) {
                (Identity::User(open_id), Peeked::Whole(body), Some(scopes))
                    if code == Some(SCOPE_CODE) =>
                {
                    let missing = missing_scopes(body);
                    if missing.is_empty() {
                        None
                    } else {
                        scopes
                            .send(ScopesMissing {
                                open_id: open_id.clone(),
                                scopes: missing,
                                api: format!(
                                    "{} {}",
                                    request.method,
                                    mask_path(&request.path_and_query)
                                ),
                            })
                            .await
                            .ok()
                            .flatten()
                    }
                }
                _ => None,
            };
            let mut answer = stream_back(answer, Some(peeked));
            if let Some(session) = session
                && let Ok(value) = HeaderValue::from_str(&session)
            {
                answer
                    .headers_mut()
                    .insert(HeaderName::from_static(AUTH_SESSION_HEADER), value);
            }
            return Ok(answer);
        }
    }

    /// The token of `identity`; with `rejected`, one other than it (refreshed once).
    async fn token(
        &self,
        identity: &Identity,
        rejected: Option<&Token>,
    ) -> Result<Token, ProxyError> {
        match identity {
            Identity::User(open_id) => {
                let answer = match rejected {
                    None => {
                        self.settings
                            .tokens
                            .send(GetToken {
                                open_id: open_id.clone(),
                            })
                            .await
                    }
                    Some(rejected) => {
                        self.settings
                            .tokens
                            .send(RefreshRejected {
                                open_id: open_id.clone(),
                                rejected: rejected.clone(),
                            })
                            .await
                    }
                };
                let answer = answer.map_err(|_| ProxyError::Unavailable)?;
                answer.map(|t| t.token).map_err(|e| token_error(open_id, e))
            }
            Identity::App => self
                .settings
                .tenant
                .send(GetTenantToken {
                    rejected: rejected.cloned(),
                })
                .await
                .map_err(|_| ProxyError::Unavailable)?
                .map_err(|e| ProxyError::TokenUnavailable(format!("tenant_access_token: {e}"))),
        }
    }

    /// Sends the request once with `token`; the answer's head (its body not read).
    async fn send(
        &self,
        request: &ProxyRequest,
        token: &Token,
    ) -> Result<awc::ClientResponse, ProxyError> {
        let base = request
            .base_url
            .as_deref()
            .unwrap_or(&self.settings.open_base_url);
        let url = format!("{base}{}", request.path_and_query);
        let mut upstream = self.http.request(request.method.clone(), url);
        let named_by_connection = connection_named(&request.headers);
        for (name, value) in &request.headers {
            if forwarded(name, &named_by_connection) {
                upstream = upstream.append_header((name.clone(), value.clone()));
            }
        }
        upstream = match request.auth_header {
            AuthHeader::Authorization => upstream
                .insert_header((header::AUTHORIZATION, format!("Bearer {}", token.expose()))),
            AuthHeader::McpUat => {
                upstream.insert_header(("X-Lark-MCP-UAT", token.expose().as_str()))
            }
            AuthHeader::McpTat => {
                upstream.insert_header(("X-Lark-MCP-TAT", token.expose().as_str()))
            }
        };
        // A large body goes out as slices of the held one (no copy of it): written whole,
        // it would be copied into the connection's write buffer, doubling the memory
        // of an upload in flight.
        let sent = if request.body.len() > SEND_SLICE {
            let body = request.body.clone();
            let slices = (0..body.len()).step_by(SEND_SLICE).map(move |at| {
                Ok::<_, std::convert::Infallible>(body.slice(at..(at + SEND_SLICE).min(body.len())))
            });
            upstream
                .send_body(SizedStream::new(
                    request.body.len() as u64,
                    futures_util::stream::iter(slices),
                ))
                .await
        } else {
            upstream.send_body(request.body.clone()).await
        };
        match sent {
            Ok(answer) => Ok(answer),
            Err(awc::error::SendRequestError::Timeout) => Err(ProxyError::UpstreamTimeout),
            Err(e) => Err(ProxyError::Upstream(e.to_string())),
        }
    }
}

/// `GetTokenError` as the proxy's answer.
fn token_error(open_id: &str, e: GetTokenError) -> ProxyError {
    match e {
        GetTokenError::NoGrant => ProxyError::NoGrant(open_id.to_string()),
        e @ (GetTokenError::NeedsReauth { .. }
        | GetTokenError::Revoked
        | GetTokenError::RefreshOutcomeUnknown) => ProxyError::NeedsReauth {
            open_id: open_id.to_string(),
            why: e.to_string(),
        },
        GetTokenError::RefreshFailed { retry_after, .. } => {
            ProxyError::RefreshFailed { retry_after }
        }
        GetTokenError::Contended => ProxyError::RefreshFailed {
            retry_after: Duration::ZERO,
        },
        e @ (GetTokenError::Vault(_) | GetTokenError::VaultUnavailable) => {
            ProxyError::TokenUnavailable(e.to_string())
        }
    }
}

/// Lowercase names listed in the `Connection` header(s).
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether a request header of the caller goes upstream.
fn forwarded(name: &HeaderName, named_by_connection: &[String]) -> bool {
    let name = name.as_str();
    !(FORWARD_DROPPED.contains(&name)
        || HOP_BY_HOP.contains(&name)
        || name.starts_with("x-lark-proxy-")
        || named_by_connection.iter().any(|n| n == name))
}

/// A small JSON error answer worth reading for its platform `code`.
fn peekable(answer: &awc::ClientResponse) -> bool {
    let json = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let small = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n <= PEEK_LIMIT as u64);
    answer.status().as_u16() >= 400 && json && small
}

/// What was read of an answer's body.
enum Peeked {
    /// All of it.
    Whole(Bytes),
    /// Its first bytes (more than [`PEEK_LIMIT`]); the rest is still in the answer.
    Partial(Bytes),
}

/// Reads up to [`PEEK_LIMIT`] bytes of the answer's body.
async fn peek(mut answer: awc::ClientResponse) -> (awc::ClientResponse, Peeked) {
    let mut read = BytesMut::new();
    while read.len() <= PEEK_LIMIT {
        match answer.next().await {
            Some(Ok(chunk)) => read.extend_from_slice(&chunk),
            // A broken body: pass on what was read; the caller sees the short body.
            Some(Err(_)) | None => return (answer, Peeked::Whole(read.freeze())),
        }
    }
    (answer, Peeked::Partial(read.freeze()))
}

/// The platform `code` of a JSON body (number or numeric string), if any.
fn platform_code(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Coded {
        code: serde_json::Value,
    }
    let coded: Coded = serde_json::from_slice(body).ok()?;
    match coded.code {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The scopes a 99991679 answer names (`error.permission_violations[].subject`).
fn missing_scopes(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    value["error"]["permission_violations"]
        .as_array()
        .map(|violations| {
            violations
                .iter()
                .filter_map(|v| v["subject"].as_str())
                .filter(|s| !s.is_empty() && s.len() <= 128 && !s.contains(char::is_whitespace))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The answer for the caller: the platform's status and headers (but hop-by-hop ones),
/// and its body — what was already read, then the rest as it streams in.
fn stream_back(answer: awc::ClientResponse, peeked: Option<Peeked>) -> HttpResponse {
    let status =
        StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    let named_by_connection = connection_named(answer.headers());
    let mut length = None;
    for (name, value) in answer.headers() {
        if name == header::CONTENT_LENGTH {
            length = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            continue;
        }
        if HOP_BY_HOP.contains(&name.as_str())
            || named_by_connection.iter().any(|n| n == name.as_str())
        {
            continue;
        }
        builder.append_header((name.clone(), value.clone()));
    }
    match peeked {
        Some(Peeked::Whole(body)) => builder.body(body),
        Some(Peeked::Partial(head)) => {
            let rest = futures_util::stream::once(async move { Ok(head) }).chain(answer);
            match length {
                Some(n) => builder.body(SizedStream::new(n, rest)),
                None => builder.body(BodyStream::new(rest)),
            }
        }
        None => match length {
            Some(n) => builder.body(SizedStream::new(n, answer)),
            None => builder.body(BodyStream::new(answer)),
        },
    }
}
