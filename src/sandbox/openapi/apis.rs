//! Plain OpenAPI routes of the sandbox, for the OpenAPI proxy's tests: what a user or the
//! app calls with its token once it has one (§6 general errors apply to all of them).
//!
//! - `GET /open-apis/task/v2/tasks` ([`TASKS_PATH`]) and
//!   `GET /open-apis/calendar/v4/calendars` ([`CALENDARS_PATH`]): user token only, need
//!   one of [`TASK_SCOPES`] / [`CALENDAR_SCOPES`] in the token's grant, else HTTP 400
//!   `99991679` with
//!   `error.permission_violations` listing them (as
//!   `shared/fixtures/openapi/api_error_user_scope_insufficient.json`);
//! - `GET /open-apis/drive/v1/medias/{file_token}/download` ([`DOWNLOAD_PREFIX`]): user or
//!   tenant token; a `file_token` of the form `sandbox_bytes_<N>` streams `N` bytes of
//!   [`download_byte`] in 64 KiB chunks (chunked transfer, no `Content-Length`), anything
//!   else answers `1061004` "not found";
//! - `POST /open-apis/drive/v1/medias/upload_all` ([`UPLOAD_PATH`]): user or tenant token;
//!   reads the body as it streams in and answers its size and SHA-256 (hex);
//! - `GET /open-apis/tenant/v2/tenant/query` ([`TENANT_QUERY_PATH`]): tenant token only
//!   (a user token answers 99991668, as an API that does not accept user tokens does).
//!
//! Token checks, in order: no `Authorization: Bearer` → 400 `99991661`; a user token that
//! is revoked or unknown → 400 `99991668`; expired (sandbox clock, or
//! [`Sandbox::expire_access_tokens`]) → 400 `99991677`; a tenant token that is not
//! current ([`Sandbox::invalidate_tenant_tokens`]) → 400 `99991663`. Faults of
//! [`OpenApiRoute::Api`] apply first (rate limits with their `x-ogw-ratelimit-*` headers,
//! [`OpenApiFault::ApiCode`](super::OpenApiFault::ApiCode)).

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::tokens::bearer;
use super::{OpenApiRoute, RecordedApiRequest, api_code_message, fault_answer, json_answer};
use crate::sandbox::{Sandbox, Shared};

/// The task list route (needs a task scope).
pub const TASKS_PATH: &str = "/open-apis/task/v2/tasks";
/// Scopes of which the task list needs one (both are named when missing).
pub const TASK_SCOPES: [&str; 2] = ["task:task:read", "task:task:write"];
/// The calendar list route (needs a calendar scope).
pub const CALENDARS_PATH: &str = "/open-apis/calendar/v4/calendars";
/// Scopes of which the calendar list needs one (both are named when missing).
pub const CALENDAR_SCOPES: [&str; 2] = ["calendar:calendar:readonly", "calendar:calendar"];
/// Prefix of the download route: `{DOWNLOAD_PREFIX}/{file_token}/download`.
pub const DOWNLOAD_PREFIX: &str = "/open-apis/drive/v1/medias";
/// The upload route.
pub const UPLOAD_PATH: &str = "/open-apis/drive/v1/medias/upload_all";
/// The tenant-token-only route.
pub const TENANT_QUERY_PATH: &str = "/open-apis/tenant/v2/tenant/query";

/// Bytes per chunk of a streamed download.
const CHUNK: usize = 64 * 1024;

/// Byte `i` of every sandbox download (a pattern that catches dropped or reordered
/// chunks).
pub fn download_byte(i: u64) -> u8 {
    ((i.wrapping_mul(31) ^ (i >> 16)) % 251) as u8
}

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(TASKS_PATH, web::get().to(tasks))
        .route(CALENDARS_PATH, web::get().to(calendars))
        .route(UPLOAD_PATH, web::post().to(upload))
        .route(
            &format!("{DOWNLOAD_PREFIX}/{{file_token}}/download"),
            web::get().to(download),
        )
        .route(TENANT_QUERY_PATH, web::get().to(tenant_query));
}

/// Whose token a request carried.
enum Caller {
    User { scope: String },
    Tenant,
}

/// Which tokens a route accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accepts {
    User,
    Tenant,
    Both,
}

/// Checks the token (see the module docs); `Err(code)` is the platform code refusing it.
fn check_token(req: &HttpRequest, shared: &Shared, accepts: Accepts) -> Result<Caller, i64> {
    let token = bearer(req).ok_or(99_991_661)?;
    let state = shared.lock();
    let now = state.openapi.now();
    if let Some(g) = state.openapi.access_tokens.get(&token) {
        if g.revoked || accepts == Accepts::Tenant {
            return Err(99_991_668);
        }
        if now >= g.expires_at {
            return Err(99_991_677);
        }
        return Ok(Caller::User {
            scope: g.scope.clone(),
        });
    }
    if token.starts_with("t-") {
        if accepts == Accepts::User {
            return Err(99_991_668);
        }
        let current = state
            .openapi
            .tenant_tokens
            .iter()
            .any(|t| t.token == token && now < t.expires_at);
        return if current {
            Ok(Caller::Tenant)
        } else {
            Err(99_991_663)
        };
    }
    Err(99_991_668)
}

/// Records the request; returns the queued fault's answer, if any.
fn arrive(req: &HttpRequest, shared: &Shared) -> (Option<HttpResponse>, usize) {
    let fault = {
        let mut state = shared.lock();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        state.openapi.api_requests.push(RecordedApiRequest {
            method: req.method().as_str().to_string(),
            path_and_query,
            headers,
            body_len: 0,
            code: 0,
        });
        state.openapi.take_fault(OpenApiRoute::Api)
    };
    shared.notify();
    let index = shared.lock().openapi.api_requests.len() - 1;
    let answer = fault.as_ref().and_then(|f| fault_answer(shared, f, false));
    if answer.is_some() {
        let code = match fault {
            Some(super::OpenApiFault::ApiCode(code)) => code,
            Some(
                super::OpenApiFault::RateLimited { .. }
                | super::OpenApiFault::RateLimitedOn400 { .. },
            ) => 99_991_400,
            _ => -1,
        };
        shared.lock().openapi.api_requests[index].code = code;
    }
    (answer, index)
}

fn record(shared: &Shared, index: usize, code: i64, body_len: u64) {
    let mut state = shared.lock();
    if let Some(r) = state.openapi.api_requests.get_mut(index) {
        r.code = code;
        r.body_len = body_len;
    }
}

fn refuse(shared: &Shared, index: usize, code: i64) -> HttpResponse {
    record(shared, index, code, 0);
    json_answer(
        shared,
        400,
        json!({"code": code, "msg": api_code_message(code)}),
    )
}

/// `GET /open-apis/task/v2/tasks`.
async fn tasks(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    scoped(req, shared, &TASK_SCOPES).await
}

/// `GET /open-apis/calendar/v4/calendars`.
async fn calendars(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    scoped(req, shared, &CALENDAR_SCOPES).await
}

/// A user-token route needing one of `needed`.
async fn scoped(req: HttpRequest, shared: web::Data<Shared>, needed: &[&str]) -> HttpResponse {
    let (fault, index) = arrive(&req, &shared);
    if let Some(answer) = fault {
        return answer;
    }
    let scope = match check_token(&req, &shared, Accepts::User) {
        Ok(Caller::User { scope }) => scope,
        Ok(Caller::Tenant) => return refuse(&shared, index, 99_991_668),
        Err(code) => return refuse(&shared, index, code),
    };
    if !scope.split(' ').any(|s| needed.contains(&s)) {
        record(&shared, index, 99_991_679, 0);
        let n = shared.lock().openapi.next();
        return json_answer(
            &shared,
            400,
            json!({
                "code": 99_991_679,
                "msg": format!(
                    "Unauthorized. You do not have permission to perform the requested operation on the resource. Please request user re-authorization and try again. required one of these privileges: [{}]",
                    needed.join(", ")
                ),
                "error": {
                    "log_id": format!("sandbox-log-{n:08}"),
                    "permission_violations": needed
                        .iter()
                        .map(|s| json!({"subject": s, "type": "action_privilege_required"}))
                        .collect::<Vec<_>>(),
                },
            }),
        );
    }
    record(&shared, index, 0, 0);
    json_answer(
        &shared,
        200,
        json!({"code": 0, "msg": "success", "data": {"items": [], "has_more": false}}),
    )
}

/// `GET /open-apis/drive/v1/medias/{file_token}/download`.
async fn download(
    req: HttpRequest,
    path: web::Path<String>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let (fault, index) = arrive(&req, &shared);
    if let Some(answer) = fault {
        return answer;
    }
    if let Err(code) = check_token(&req, &shared, Accepts::Both) {
        return refuse(&shared, index, code);
    }
    let Some(size) = path
        .strip_prefix("sandbox_bytes_")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        record(&shared, index, 1_061_004, 0);
        return json_answer(&shared, 404, json!({"code": 1_061_004, "msg": "not found"}));
    };
    record(&shared, index, 0, 0);
    let hold = shared.lock().openapi.download_hold.clone();
    let chunks = futures_util::stream::unfold(0u64, move |offset| {
        let hold = hold.clone();
        async move {
            if offset >= size {
                return None;
            }
            if offset > 0
                && let Some(hold) = hold
            {
                // Held after the first chunk until the test releases downloads.
                let _ = hold.acquire().await.map(|p| p.forget());
            }
            let len = (size - offset).min(CHUNK as u64);
            let chunk: Vec<u8> = (offset..offset + len).map(download_byte).collect();
            Some((Ok::<_, actix_web::Error>(Bytes::from(chunk)), offset + len))
        }
    });
    super::answer_builder(&shared, 200)
        .content_type("application/octet-stream")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{path}.bin\""),
        ))
        .streaming(chunks)
}

/// `POST /open-apis/drive/v1/medias/upload_all`.
async fn upload(
    req: HttpRequest,
    mut body: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let (fault, index) = arrive(&req, &shared);
    if let Some(answer) = fault {
        return answer;
    }
    if let Err(code) = check_token(&req, &shared, Accepts::Both) {
        return refuse(&shared, index, code);
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Err(_) => return HttpResponse::BadRequest().finish(),
        }
    }
    let sha256: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    record(&shared, index, 0, size);
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    json_answer(
        &shared,
        200,
        json!({"code": 0, "msg": "success", "data": {
            "file_token": super::random_id("boxsandbox"),
            "size": size,
            "sha256": sha256,
            "content_type": content_type,
        }}),
    )
}

/// `GET /open-apis/tenant/v2/tenant/query`.
async fn tenant_query(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let (fault, index) = arrive(&req, &shared);
    if let Some(answer) = fault {
        return answer;
    }
    if let Err(code) = check_token(&req, &shared, Accepts::Tenant) {
        return refuse(&shared, index, code);
    }
    record(&shared, index, 0, 0);
    let tenant_key = shared.config.openapi.tenant_key.clone();
    json_answer(
        &shared,
        200,
        json!({"code": 0, "msg": "success", "data": {"tenant": {
            "name": "Sandbox Tenant", "display_id": "F000000001", "tenant_key": tenant_key,
        }}}),
    )
}

impl Sandbox {
    /// Every request to the plain OpenAPI routes ([`OpenApiRoute::Api`]), in arrival
    /// order.
    pub fn api_requests(&self) -> Vec<RecordedApiRequest> {
        self.shared.lock().openapi.api_requests.clone()
    }

    /// Expires every access token of `open_id` now (the platform may end a token before
    /// its `expires_in`): calls with them answer 99991677; the refresh token still works.
    pub fn expire_access_tokens(&self, open_id: &str) {
        let mut state = self.shared.lock();
        let now = state.openapi.now();
        for grant in state.openapi.access_tokens.values_mut() {
            if grant.open_id == open_id {
                grant.expires_at = grant.expires_at.min(now);
            }
        }
        drop(state);
        self.shared.notify();
    }

    /// Holds every download that starts from now on after its first chunk, until
    /// [`release_downloads`](Self::release_downloads): a test sees that the first bytes
    /// reach the client while the rest is not even produced.
    pub fn hold_downloads(&self) {
        self.shared.lock().openapi.download_hold =
            Some(std::sync::Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets held downloads go on to their end (and stops holding new ones).
    pub fn release_downloads(&self) {
        if let Some(hold) = self.shared.lock().openapi.download_hold.take() {
            hold.close();
        }
    }

    /// Ends every tenant_access_token issued so far: calls with one answer 99991663, and
    /// the tenant token endpoint issues a new one.
    pub fn invalidate_tenant_tokens(&self) {
        self.shared.lock().openapi.tenant_tokens.clear();
        self.shared.notify();
    }
}
