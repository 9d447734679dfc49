//! The HTTP front (actix-web): control API, `/healthz`, `/metrics`.
//!
//! Contract: `INTERFACE.md` ("Control API"). Every route except `/healthz` and
//! `/oauth/callback` needs `Authorization: Bearer <token>` (`/metrics` too: Prometheus
//! sends it with `authorization: {credentials_file: ...}` in the scrape config); the token is
//! compared in constant time (SHA-256 digests compared with `subtle`). Errors are JSON
//! `{"error": "<stable code>", "message": "<human text>"}`, plus `"field": "<name>"` when
//! one field of the request is at fault (an invalid `open_id`, an unknown or missing body
//! field). Timestamps are RFC 3339 UTC.
//!
//! Input: every `open_id` (body or path) must have the platform's shape
//! ([`crate::openapi::check_open_id`]) or the answer is `400 invalid_open_id` before
//! anything is stored or sent. JSON bodies: at most [`MAX_BODY_BYTES`] (`413
//! payload_too_large`), `Content-Type: application/json` (`415 unsupported_media_type`),
//! well-formed (`400 invalid_json`), no unknown field (`400 unknown_field`), no missing
//! one (`400 missing_field`).
//!
//! The server runs on its own worker threads; handlers reach the actors only through
//! their addresses (`Addr` is `Send`), never through shared state.

pub mod resources;

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use actix::Addr;
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use resources::{AuthorizationRequest, GrantResource, SessionResource};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::connection::{ConnectionActor, ConnectionState, GetConnectionStatus};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::session::cards::CardLocale;
use crate::session::machine::SessionState;
use crate::session::router::{
    GetSession, ListSessionViews, OAuthRedirect, RedirectError, StartAuthorization, StartError,
};
use crate::session::texts::landing;
use crate::session::{RouterActor, SessionView};
use crate::vault::actor::{ListGrants, Revoke};
use crate::vault::{GrantSummary, TokenVaultActor};

/// Most grants one `GET /v1/grants` page returns.
pub const GRANTS_PAGE_LIMIT: usize = 1000;

/// Largest JSON request body accepted, bytes (64 KiB; an authorization request is well
/// under 1 KiB). Larger: `413 payload_too_large`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An error answer of the control API.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `unauthorized`, `not_found`.
    pub code: &'static str,
    /// Human-readable explanation (never holds a secret).
    pub message: String,
    /// The request field at fault (`open_id`, an unknown body field), when one is.
    pub field: Option<String>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The same error, naming the request field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// `400 invalid_open_id` naming the `open_id` field, when `open_id` is not shaped
    /// like the platform's ([`crate::openapi::check_open_id`]).
    ///
    /// # Errors
    /// The `400` answer.
    pub fn check_open_id(open_id: &str) -> Result<(), ApiError> {
        crate::openapi::check_open_id(open_id).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_open_id",
                format!("{e}: a user's open_id is `ou_` followed by letters, digits or `_`"),
            )
            .with_field("open_id")
        })
    }

    /// The answer to a JSON body that could not be read (see the module docs for the
    /// codes).
    fn from_json(error: &JsonPayloadError) -> Self {
        match error {
            JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                )
            }
            JsonPayloadError::ContentType => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON with `Content-Type: application/json`",
            ),
            JsonPayloadError::Deserialize(e) => {
                let text = e.to_string();
                let named = |prefix: &str| {
                    text.strip_prefix(prefix)
                        .and_then(|rest| rest.split_once('`'))
                        .map(|(name, _)| name.to_string())
                };
                if let Some(field) = named("unknown field `") {
                    ApiError::new(StatusCode::BAD_REQUEST, "unknown_field", text).with_field(field)
                } else if let Some(field) = named("missing field `") {
                    ApiError::new(StatusCode::BAD_REQUEST, "missing_field", text).with_field(field)
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", text)
                }
            }
            other => ApiError::new(
                other.status_code(),
                "invalid_body",
                format!("the body could not be read: {other}"),
            ),
        }
    }

    fn unavailable(what: &str) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is not running"),
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = serde_json::json!({
            "error": self.code,
            "message": self.message,
        });
        if let Some(field) = &self.field {
            body["field"] = serde_json::Value::String(field.clone());
        }
        HttpResponse::build(self.status).json(body)
    }
}

/// What the handlers can reach. Clone per worker.
#[derive(Clone)]
pub struct ControlState {
    /// SHA-256 of the bearer token; `None` refuses every protected route.
    api_token_digest: Option<[u8; 32]>,
    /// The connection, for `/healthz`.
    pub connection: Option<Addr<ConnectionActor>>,
    /// The vault, for grants.
    pub vault: Option<Addr<TokenVaultActor>>,
    /// The session router, for authorizations and the OAuth landing.
    pub router: Option<Addr<RouterActor>>,
    /// The token service, for `GET /v1/grants/{open_id}/token`.
    pub tokens: Option<Addr<crate::tokens::TokenService>>,
    /// The metrics rendered by `/metrics`.
    pub metrics: Metrics,
    /// The loss of acknowledged writes the service was started on (`serve
    /// --accept-loss`), one line; `/healthz` shows it as `vault_loss`.
    pub vault_loss: Option<String>,
    /// The event gateway, for `GET /v1/events/forward` (`None`: no targets, empty list).
    pub gateway: Option<Addr<crate::events::gateway::EventGateway>>,
    /// The OpenAPI proxy's settings (`None`: `/v1/openapi/…` answers 503); each worker
    /// builds its own [`Forwarder`](crate::proxy::Forwarder) from them.
    pub proxy: Option<crate::proxy::ProxySettings>,
}

impl ControlState {
    /// The session router, or 503 `unavailable` when this front was started without it.
    fn router_addr(&self) -> Result<&Addr<RouterActor>, ApiError> {
        self.router
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("the session router"))
    }

    /// The vault, or 503 `unavailable`.
    fn vault_addr(&self) -> Result<&Addr<TokenVaultActor>, ApiError> {
        self.vault
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("the vault"))
    }

    /// The token service, or 503 `unavailable`.
    fn tokens_addr(&self) -> Result<&Addr<crate::tokens::TokenService>, ApiError> {
        self.tokens
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("the token service"))
    }

    /// State with the given bearer token (`None`: protected routes always answer 401).
    pub fn new(api_token: Option<&Secret<String>>, metrics: Metrics) -> Self {
        ControlState {
            api_token_digest: api_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            connection: None,
            vault: None,
            router: None,
            tokens: None,
            metrics,
            vault_loss: None,
            gateway: None,
            proxy: None,
        }
    }

    /// Checks the `Authorization: Bearer …` header.
    ///
    /// # Errors
    /// `401 unauthorized` when the header is missing, malformed or wrong, or no token is
    /// configured.
    pub fn authorize(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let unauthorized =
            |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_string());
        let Some(expected) = &self.api_token_digest else {
            return Err(unauthorized(
                "the control API has no token configured (set the variable named by http.api_token_env)",
            ));
        };
        let presented = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header"))?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            Err(unauthorized("wrong bearer token"))
        }
    }
}

/// Formats unix milliseconds as RFC 3339 UTC (`2026-11-30T05:46:00.123Z`).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

impl From<&GrantSummary> for GrantResource {
    fn from(g: &GrantSummary) -> Self {
        GrantResource {
            open_id: g.identity.open_id.clone(),
            status: g.status.as_str().to_string(),
            scopes: g.scopes.clone(),
            access_expires_at: rfc3339_ms(g.access_expires_ms),
            refresh_expires_at: rfc3339_ms(g.refresh_expires_ms),
        }
    }
}

async fn healthz(state: web::Data<ControlState>) -> HttpResponse {
    let connection = match &state.connection {
        Some(addr) => match addr.send(GetConnectionStatus).await {
            Ok(status) => status.state,
            Err(_) => ConnectionState::Failed,
        },
        None => ConnectionState::Stopped,
    };
    let vault_ok = probe_store(&state).await;
    let healthy = vault_ok
        && !matches!(
            connection,
            ConnectionState::Failed | ConnectionState::Stopped
        );
    let mut body = serde_json::json!({
        "connection": connection.as_str(),
        "vault": if state.vault.is_none() { "absent" } else if vault_ok { "ok" } else { "unavailable" },
    });
    if state.vault.is_some() {
        // INTERFACE.md "Several instances on one shared store": `store` is `ok` or
        // `unreachable` (for sled as for PostgreSQL).
        body["store"] = serde_json::Value::from(if vault_ok { "ok" } else { "unreachable" });
    }
    if let Some(loss) = &state.vault_loss {
        body["vault_loss"] = serde_json::Value::String(loss.clone());
    }
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Longest wait for the store's answer to a health probe.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the store answers a one-grant read within [`STORE_PROBE_TIMEOUT`] (true without
/// a vault); sets `lark_auth_store_up`.
async fn probe_store(state: &ControlState) -> bool {
    let Some(addr) = &state.vault else {
        return true;
    };
    let read = addr.send(ListGrants {
        after_open_id: None,
        limit: 1,
    });
    let up = matches!(
        tokio::time::timeout(STORE_PROBE_TIMEOUT, read).await,
        Ok(Ok(Ok(_)))
    );
    state.metrics.store_up(up);
    up
}

async fn metrics(
    req: HttpRequest,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req)?;
    probe_store(&state).await;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode()))
}

async fn forward_status(
    req: HttpRequest,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req)?;
    let targets = match &state.gateway {
        None => Vec::new(),
        Some(g) => g
            .send(crate::events::gateway::GetForwardStatus)
            .await
            .map_err(|_| ApiError::unavailable("the event gateway"))?,
    };
    let body: Vec<resources::ForwardTargetResource> = targets
        .into_iter()
        .map(|t| resources::ForwardTargetResource {
            target: t.target,
            pending: t.pending,
            delivered_total: t.delivered_total,
            failed_total: t.failed_total,
            dead: t.dead,
            oldest_pending_at: t.oldest_pending_at_ms.map(rfc3339_ms),
        })
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

async fn list_grants(
    req: HttpRequest,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req)?;
    let vault = state.vault_addr()?;
    let grants = vault
        .send(ListGrants {
            after_open_id: None,
            limit: GRANTS_PAGE_LIMIT,
        })
        .await
        .map_err(|_| ApiError::unavailable("the vault"))?
        .map_err(vault_failure)?;
    let views: Vec<GrantResource> = grants.iter().map(GrantResource::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

async fn grant_token(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    use crate::tokens::GetTokenError as E;
    state.authorize(&req)?;
    let open_id = path.into_inner();
    ApiError::check_open_id(&open_id)?;
    let tokens = state.tokens_addr()?;
    let result = tokens
        .send(crate::tokens::GetToken {
            open_id: open_id.clone(),
        })
        .await
        .map_err(|_| ApiError::unavailable("the token service"))?;
    match result {
        Ok(token) => Ok(HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({
                "access_token": token.token.expose(),
                "expires_at": rfc3339_ms(token.expires_ms),
            }))),
        Err(E::NoGrant) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_grant",
            format!("no grant for {open_id}: start an authorization"),
        )),
        Err(e @ (E::NeedsReauth { .. } | E::Revoked | E::RefreshOutcomeUnknown)) => {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "needs_reauth",
                format!("{e}: start a new authorization for {open_id}"),
            ))
        }
        // Transient: no valid token now, one later. `Retry-After` says when the next
        // refresh attempt is allowed (the stored token is served while it is valid, so
        // this only answers when there is none).
        Err(e @ (E::RefreshFailed { .. } | E::Contended)) => {
            let wait = match &e {
                E::RefreshFailed { retry_after, .. } => *retry_after,
                _ => Duration::ZERO,
            };
            let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
            Ok(HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", secs.to_string()))
                .insert_header(("Cache-Control", "no-store"))
                .json(serde_json::json!({
                    "error": "refresh_failed",
                    "message": format!("{e}; retry in {secs} s"),
                    "retry_after_secs": secs,
                })))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault_unavailable",
            e.to_string(),
        )),
    }
}

async fn revoke_grant(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req)?;
    let open_id = path.into_inner();
    ApiError::check_open_id(&open_id)?;
    let vault = state.vault_addr()?;
    match vault
        .send(Revoke {
            open_id: open_id.clone(),
        })
        .await
    {
        Ok(Ok(Some(_))) => Ok(HttpResponse::NoContent().finish()),
        Ok(Ok(None)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_grant",
            format!("no grant for {open_id}"),
        )),
        Ok(Err(e)) => Err(vault_failure(e)),
        Err(_) => Err(ApiError::unavailable("the vault")),
    }
}

/// A vault error as an answer: the store not answering (disk, PostgreSQL down) is `503
/// store_unavailable` (retry later: INTERFACE.md, "writes answer 503" while the database
/// is unreachable); anything else (a damaged record, a key problem) `500 vault_error`.
fn vault_failure(e: crate::vault::VaultError) -> ApiError {
    use crate::store::StoreError;
    use crate::vault::VaultError;
    match &e {
        VaultError::Store(StoreError::Backend { .. }) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        ),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "vault_error",
            e.to_string(),
        ),
    }
}

impl From<&SessionView> for SessionResource {
    fn from(v: &SessionView) -> Self {
        SessionResource {
            session_id: v.session_id.clone(),
            open_id: v.open_id.clone(),
            state: v.state.as_str().to_string(),
            reason: v.reason.map(|r| r.as_str().to_string()),
            platform_code: v.platform_code,
            created_at: rfc3339_ms(v.created_at_ms),
            updated_at: rfc3339_ms(v.updated_at_ms),
            expires_at: rfc3339_ms(v.deadline_ms),
        }
    }
}

async fn start_authorization(
    req: HttpRequest,
    body: web::Json<AuthorizationRequest>,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req)?;
    let body = body.into_inner();
    ApiError::check_open_id(&body.open_id)?;
    let router = state.router_addr()?;
    let locale = match body.locale.as_deref() {
        None | Some("") => None,
        Some(name) => Some(CardLocale::from_platform(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_locale",
                format!("unknown locale `{name}`: use zh_cn or en_us"),
            )
        })?),
    };
    let result = router
        .send(
            StartAuthorization {
                open_id: body.open_id,
                scopes: body.scopes,
            }
            .with_locale(locale),
        )
        .await
        .map_err(|_| ApiError::unavailable("the session router"))?;
    match result {
        Ok(view) => Ok(HttpResponse::Accepted().json(serde_json::json!({
            "session_id": view.session_id,
            "state": view.state.as_str(),
        }))),
        Err(StartError::RateLimited { retry_after }) => {
            let secs = retry_after.as_secs().max(1);
            Ok(HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", secs.to_string()))
                .json(serde_json::json!({
                    "error": "rate_limited",
                    "message": format!("too many authorizations for this user; retry in {secs} s"),
                    "retry_after_secs": secs,
                })))
        }
        Err(StartError::InvalidOpenId) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_open_id",
            "open_id must be a user id such as ou_…",
        )
        .with_field("open_id")),
        Err(e @ StartError::Store(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )),
        Err(StartError::Stopping) => Err(ApiError::unavailable("the session router")),
    }
}

/// Most sessions one `GET /v1/authorizations` answer holds unless `limit` asks for fewer.
pub const SESSIONS_PAGE_LIMIT: usize = 1000;

/// Query of `GET /v1/authorizations`.
#[derive(Debug, serde::Deserialize)]
struct ListSessionsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/authorizations[?state=S][&limit=N]`: sessions, most recently changed first.
async fn list_authorizations(
    req: HttpRequest,
    query: web::Query<ListSessionsQuery>,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req)?;
    let router = state.router_addr()?;
    let query = query.into_inner();
    let wanted = match query.state.as_deref() {
        None | Some("") => None,
        Some(name) => Some(SessionState::parse(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_state",
                format!(
                    "unknown session state `{name}`: use one of {}",
                    SessionState::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let limit = query
        .limit
        .unwrap_or(SESSIONS_PAGE_LIMIT)
        .min(SESSIONS_PAGE_LIMIT);
    match router
        .send(ListSessionViews {
            state: wanted,
            limit,
        })
        .await
    {
        Ok(Ok(views)) => {
            let body: Vec<SessionResource> = views.iter().map(SessionResource::from).collect();
            Ok(HttpResponse::Ok().json(body))
        }
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )),
        Err(_) => Err(ApiError::unavailable("the session router")),
    }
}

async fn get_authorization(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req)?;
    let router = state.router_addr()?;
    let session_id = path.into_inner();
    match router
        .send(GetSession {
            session_id: session_id.clone(),
        })
        .await
    {
        Ok(Ok(Some(view))) => Ok(HttpResponse::Ok().json(SessionResource::from(&view))),
        Ok(Ok(None)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_session",
            format!("no session {session_id} (never existed, or pruned after its TTL)"),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )),
        Err(_) => Err(ApiError::unavailable("the session router")),
    }
}

/// Query of the OAuth redirect landing.
#[derive(Debug, serde::Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

fn landing_page(status: StatusCode, (title, text): (&str, &str)) -> HttpResponse {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\"><h1>{t}</h1><p>{x}</p></body></html>",
            t = escape(title),
            x = escape(text)
        ))
}

async fn oauth_callback(
    query: web::Query<CallbackQuery>,
    state: web::Data<ControlState>,
) -> HttpResponse {
    let Some(router) = state.router.as_ref() else {
        return landing_page(StatusCode::SERVICE_UNAVAILABLE, landing::NOT_RUNNING);
    };
    let query = query.into_inner();
    let Some(oauth_state) = query.state.filter(|s| !s.is_empty()) else {
        return landing_page(StatusCode::BAD_REQUEST, landing::STATE_MISSING);
    };
    let result = router
        .send(OAuthRedirect {
            state: oauth_state,
            code: query.code.filter(|c| !c.is_empty()).map(Secret::new),
            error: query.error,
        })
        .await;
    match result {
        Ok(Ok(view)) if view.state.as_str() == "denied" => {
            landing_page(StatusCode::OK, landing::DECLINED)
        }
        Ok(Ok(_)) => landing_page(StatusCode::OK, landing::RECEIVED),
        Ok(Err(
            e @ (RedirectError::UnknownState
            | RedirectError::StateAlreadyUsed
            | RedirectError::MissingCode),
        )) => landing_page(
            StatusCode::BAD_REQUEST,
            (landing::LINK_NOT_VALID, &e.to_string()),
        ),
        Ok(Err(e @ RedirectError::SessionEnded(_))) => {
            landing_page(StatusCode::GONE, (landing::ENDED, &e.to_string()))
        }
        Ok(Err(RedirectError::Stopping)) | Err(_) => {
            landing_page(StatusCode::SERVICE_UNAVAILABLE, landing::RESTARTING)
        }
    }
}

/// Registers the routes on an actix-web `App` (used by [`start`] and by tests).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(|e, _| ApiError::from_json(&e).into()),
    )
    .route("/healthz", web::get().to(healthz))
    .route("/metrics", web::get().to(metrics))
    .route("/oauth/callback", web::get().to(oauth_callback))
    .route("/v1/authorizations", web::post().to(start_authorization))
    .route("/v1/authorizations", web::get().to(list_authorizations))
    .route(
        "/v1/authorizations/{session_id}",
        web::get().to(get_authorization),
    )
    .route("/v1/grants", web::get().to(list_grants))
    .route("/v1/grants/{open_id}", web::delete().to(revoke_grant))
    .route("/v1/grants/{open_id}/token", web::get().to(grant_token))
    .route("/v1/events/forward", web::get().to(forward_status))
    .route(
        "/v1/openapi/{open_id}/open-apis/{path:.*}",
        web::route().to(openapi_proxy),
    );
}

/// `ANY /v1/openapi/{open_id}/open-apis/{path}`: the OpenAPI call `/open-apis/{path}`
/// (query, body and content headers passed through) made as that user, or as the app for
/// `{open_id}` = `@app` (`INTERFACE.md`, "Acting as the user"; [`crate::proxy`]). The
/// platform's answer comes back unchanged (streamed); the proxy's own refusals are JSON
/// errors: `400 invalid_open_id` / `invalid_path`, `413 payload_too_large`, `404
/// no_grant`, `409 needs_reauth`, `503 refresh_failed` (with `Retry-After`), `502` /
/// `504` when the platform cannot be reached.
async fn openapi_proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ControlState>,
) -> Result<HttpResponse, ApiError> {
    use crate::proxy::{Identity, ProxyError, ProxyRequest};
    state.authorize(&req)?;
    let proxy_error = |e: ProxyError| e.to_response();
    // The raw path, as sent: `/v1/openapi/{open_id}` then `/open-apis/…`.
    let raw = req.uri().path();
    let rest = raw.strip_prefix("/v1/openapi/").unwrap_or_default();
    let (open_id, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let identity = if open_id == "@app" || open_id == "%40app" {
        Identity::App
    } else {
        ApiError::check_open_id(open_id)?;
        Identity::User(open_id.to_string())
    };
    if let Err(e) = crate::proxy::check_path(path) {
        return Ok(proxy_error(e));
    }
    let Some(forwarder) = req.app_data::<web::Data<crate::proxy::Forwarder>>() else {
        return Ok(proxy_error(ProxyError::Unavailable));
    };
    let limit = forwarder.settings().max_body_bytes;
    let body = match crate::proxy::read_body(req.headers(), payload, limit).await {
        Ok(body) => body,
        Err(e) => return Ok(proxy_error(e)),
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let request = ProxyRequest {
        door: "rest",
        caller: "api_token".to_string(),
        identity,
        method: req.method().clone(),
        base_url: None,
        auth_header: crate::proxy::AuthHeader::Authorization,
        path_and_query,
        headers: req.headers().clone(),
        body,
    };
    Ok(forwarder.forward(request).await.unwrap_or_else(proxy_error))
}

/// A running HTTP front.
pub struct HttpFront {
    /// The address actually bound (port 0 resolved).
    pub local_addr: SocketAddr,
    /// Stops the server.
    pub handle: actix_web::dev::ServerHandle,
}

/// Binds `listen` and serves the control API on 2 worker threads, inside the current
/// actix System.
///
/// # Errors
/// The bind error (address in use, permission), naming nothing secret.
pub fn start(listen: SocketAddr, state: ControlState) -> std::io::Result<HttpFront> {
    let server = HttpServer::new(move || {
        let mut app = App::new().app_data(web::Data::new(state.clone()));
        if let Some(settings) = &state.proxy {
            // One forwarder (its awc client) per worker thread.
            app = app.app_data(web::Data::new(crate::proxy::Forwarder::new(
                settings.clone(),
            )));
        }
        app.configure(routes)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(listen)?;
    let local_addr = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(HttpFront { local_addr, handle })
}
