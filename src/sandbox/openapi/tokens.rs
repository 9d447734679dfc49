//! Token routes of the sandbox: tenant token (§3.1), device authorization (§2.6), the v2
//! user token endpoint with its three grants (§2), and `user_info` (§6).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;
use serde_json::json;

use super::{
    AccessGrant, DeviceDecision, DeviceGrant, OpenApiRoute, OpenApiState, RecordedTokenRequest,
    RefreshGrant, RefreshState, TenantToken, apply_delay, fault_answer, json_answer, pkce_ok,
    random_id,
};
use crate::openapi::authen::USER_INFO_PATH;
use crate::openapi::oauth::{
    DEVICE_AUTHORIZATION_PATH, DEVICE_CODE_GRANT, OFFLINE_ACCESS, TOKEN_PATH,
};
use crate::openapi::tenant::TENANT_TOKEN_PATH;
use crate::sandbox::Shared;
use crate::secret::Secret;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(TENANT_TOKEN_PATH, web::post().to(tenant_token))
        .route(
            DEVICE_AUTHORIZATION_PATH,
            web::post().to(device_authorization),
        )
        .route(TOKEN_PATH, web::post().to(user_token))
        .route(USER_INFO_PATH, web::get().to(user_info))
        .route(DEVICE_VERIFY_PATH, web::get().to(device_verify_page));
}

/// Path of the device verification page the sandbox hands out.
const DEVICE_VERIFY_PATH: &str = "/oauth/v1/device/verify";

/// `GET /oauth/v1/device/verify?user_code=…`: a plain page naming the code. Consent is
/// given through [`super::Sandbox::approve_device`], not through this page.
async fn device_verify_page(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let user_code = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "user_code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let known = shared
        .lock()
        .openapi
        .devices
        .values()
        .any(|g| g.user_code == user_code);
    let text: String = user_code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let (status, body) = if known {
        (
            actix_web::http::StatusCode::OK,
            format!(
                "lark-auth sandbox: authorize device code {text}? (tests call Sandbox::approve_device)"
            ),
        )
    } else {
        (
            actix_web::http::StatusCode::NOT_FOUND,
            "lark-auth sandbox: unknown user code".to_string(),
        )
    };
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

/// Body parameters from a JSON object (string values) or a form.
fn params(req: &HttpRequest, body: &[u8]) -> HashMap<String, String> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    }
}

/// `Authorization: Bearer <token>` value.
pub(super) fn bearer(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

/// `POST /open-apis/auth/v3/tenant_access_token/internal` (§3.1).
async fn tenant_token(body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let fault = {
        let mut state = shared.lock();
        state.openapi.tenant_token_requests += 1;
        state.openapi.take_fault(OpenApiRoute::TenantToken)
    };
    shared.notify();
    if let Some(answer) = fault.as_ref().and_then(|f| fault_answer(&shared, f, false)) {
        return answer;
    }
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let config = &shared.config;
    let answer = if parsed["app_id"].as_str() != Some(config.app_id.as_str()) {
        json_answer(&shared, 200, json!({"code": 10003, "msg": "invalid param"}))
    } else if parsed["app_secret"].as_str() != Some(config.app_secret.expose().as_str()) {
        json_answer(
            &shared,
            200,
            json!({"code": 99_991_543, "msg": "app_id or app_secret is invalid"}),
        )
    } else {
        let (token, remaining) = {
            let mut state = shared.lock();
            let o = &mut state.openapi;
            let now = o.now();
            let reuse = o.tenant_tokens.last().and_then(|t| {
                let remaining = t.expires_at.saturating_duration_since(now);
                (remaining >= config.openapi.tenant_token_reuse_margin)
                    .then(|| (t.token.clone(), remaining))
            });
            reuse.unwrap_or_else(|| {
                let token = random_id("t-sandbox_");
                let lifetime = config.openapi.tenant_token_lifetime;
                o.tenant_tokens.push(TenantToken {
                    token: token.clone(),
                    expires_at: now + lifetime,
                });
                (token, lifetime)
            })
        };
        json_answer(
            &shared,
            200,
            json!({"code": 0, "msg": "ok", "tenant_access_token": token,
                   "expire": remaining.as_secs()}),
        )
    };
    apply_delay(&fault).await;
    answer
}

/// `POST /oauth/v1/device_authorization` (§2.6): Basic app credentials, form body.
async fn device_authorization(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let fault = shared
        .lock()
        .openapi
        .take_fault(OpenApiRoute::DeviceAuthorization);
    if let Some(answer) = fault.as_ref().and_then(|f| fault_answer(&shared, f, true)) {
        return answer;
    }
    let config = &shared.config;
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", config.app_id, config.app_secret.expose()))
    );
    let basic_ok = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    let p = params(&req, &body);
    let answer = if !basic_ok || p.get("client_id") != Some(&config.app_id) {
        json_answer(
            &shared,
            401,
            json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        )
    } else {
        let device_code = random_id("sandbox_device_");
        let mut rng = rand::thread_rng();
        let letters: String = (0..8)
            .map(|_| char::from(b'A' + rng.gen_range(0..26u8)))
            .collect();
        let user_code = format!("{}-{}", &letters[..4], &letters[4..]);
        let verify = format!("http://127.0.0.1:{}{DEVICE_VERIFY_PATH}", shared.port);
        {
            let mut state = shared.lock();
            let now = state.openapi.now();
            state.openapi.devices.insert(
                device_code.clone(),
                DeviceGrant {
                    user_code: user_code.clone(),
                    scope: p.get("scope").cloned().unwrap_or_default(),
                    expires_at: now + config.openapi.device_code_lifetime,
                    interval: config.openapi.device_poll_interval,
                    last_poll: None,
                    decision: DeviceDecision::Pending,
                    redeemed: false,
                },
            );
        }
        shared.notify();
        json_answer(
            &shared,
            200,
            json!({
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verify,
                "verification_uri_complete": format!("{verify}?user_code={user_code}"),
                "expires_in": config.openapi.device_code_lifetime.as_secs(),
                "interval": config.openapi.device_poll_interval.as_secs(),
            }),
        )
    };
    apply_delay(&fault).await;
    answer
}

/// What the token endpoint answers: HTTP status and body.
struct TokenOutcome {
    status: u16,
    body: serde_json::Value,
}

impl TokenOutcome {
    fn error(status: u16, code: i64, error: &str, description: &str) -> TokenOutcome {
        TokenOutcome {
            status,
            body: json!({"code": code, "error": error, "error_description": description}),
        }
    }

    /// An RFC 8628 polling answer (no `code`, as in the fixture).
    fn device(error: &str, description: &str) -> TokenOutcome {
        TokenOutcome {
            status: 400,
            body: json!({"error": error, "error_description": description}),
        }
    }
}

/// `POST /open-apis/authen/v2/oauth/token` (§2).
async fn user_token(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let received_at = std::time::Instant::now();
    let p = params(&req, &body);
    let grant_type = p.get("grant_type").cloned();
    let mut record = RecordedTokenRequest {
        grant_type: grant_type.clone(),
        content_type: req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        refresh_token: (grant_type.as_deref() == Some("refresh_token"))
            .then(|| p.get("refresh_token").cloned().map(Secret::new))
            .flatten(),
        fault: None,
        code: None,
        error: None,
        received_at,
    };
    let fault = shared.lock().openapi.take_fault(OpenApiRoute::UserToken);
    record.fault = fault.clone();
    if let Some(answer) = fault.as_ref().and_then(|f| fault_answer(&shared, f, true)) {
        shared.lock().openapi.token_requests.push(record);
        shared.notify();
        return answer;
    }
    let outcome = {
        let mut state = shared.lock();
        let outcome = if fault == Some(super::OpenApiFault::SlowDown) {
            let now = state.openapi.now();
            if let Some(grant) = p
                .get("device_code")
                .and_then(|c| state.openapi.devices.get_mut(c))
            {
                grant.interval += Duration::from_secs(5);
                grant.last_poll = Some(now);
            }
            TokenOutcome::device(
                "slow_down",
                "Polling too fast; add 5 seconds to the interval.",
            )
        } else {
            token_outcome(&shared, &mut state.openapi, &req, &p)
        };
        record.code = outcome.body["code"].as_i64();
        record.error = outcome.body["error"].as_str().map(str::to_string);
        state.openapi.token_requests.push(record);
        outcome
    };
    shared.notify();
    let answer = json_answer(&shared, outcome.status, outcome.body);
    apply_delay(&fault).await;
    answer
}

fn token_outcome(
    shared: &Shared,
    o: &mut OpenApiState,
    req: &HttpRequest,
    p: &HashMap<String, String>,
) -> TokenOutcome {
    let config = &shared.config;
    if req.headers().contains_key(AUTHORIZATION) && p.contains_key("client_secret") {
        return TokenOutcome::error(
            400,
            20070,
            "invalid_request",
            "Use only one client authentication method.",
        );
    }
    let Some(client_id) = p.get("client_id") else {
        return TokenOutcome::error(400, 20001, "invalid_request", "client_id is missing.");
    };
    if client_id != &config.app_id {
        return TokenOutcome::error(400, 20048, "invalid_client", "The app does not exist.");
    }
    if p.get("client_secret").map(String::as_str) != Some(config.app_secret.expose().as_str()) {
        return TokenOutcome::error(
            400,
            20002,
            "invalid_client",
            "The client secret is invalid.",
        );
    }
    let now = o.now();
    match p.get("grant_type").map(String::as_str) {
        Some("authorization_code") => code_grant(shared, o, p, now),
        Some("refresh_token") => refresh_grant(shared, o, p, now),
        Some(DEVICE_CODE_GRANT) => device_grant(shared, o, p, now),
        Some(_) => TokenOutcome::error(
            400,
            20036,
            "unsupported_grant_type",
            "The grant type is not supported.",
        ),
        None => TokenOutcome::error(400, 20001, "invalid_request", "grant_type is missing."),
    }
}

fn code_grant(
    shared: &Shared,
    o: &mut OpenApiState,
    p: &HashMap<String, String>,
    now: Instant,
) -> TokenOutcome {
    let Some(code) = p.get("code") else {
        return TokenOutcome::error(400, 20001, "invalid_request", "code is missing.");
    };
    let Some(grant) = o.codes.get_mut(code) else {
        return TokenOutcome::error(
            400,
            20003,
            "invalid_grant",
            "The authorization code is not found.",
        );
    };
    if grant.used {
        return TokenOutcome::error(
            400,
            20065,
            "invalid_grant",
            "The authorization code has been used.",
        );
    }
    if now >= grant.issued_at + shared.config.openapi.code_lifetime {
        return TokenOutcome::error(
            400,
            20004,
            "invalid_grant",
            "The authorization code has expired.",
        );
    }
    if let Some(uri) = p.get("redirect_uri")
        && uri != &grant.redirect_uri
    {
        return TokenOutcome::error(
            400,
            20071,
            "invalid_grant",
            "The redirect_uri does not match the one used in the authorization request.",
        );
    }
    if let Some(challenge) = &grant.challenge
        && !pkce_ok(challenge, p.get("code_verifier").map(String::as_str))
    {
        return TokenOutcome::error(400, 20049, "invalid_grant", "PKCE verification failed.");
    }
    grant.used = true;
    let (open_id, scope) = (grant.open_id.clone(), grant.scope.clone());
    issue(shared, o, &open_id, &scope, now, now)
}

fn refresh_grant(
    shared: &Shared,
    o: &mut OpenApiState,
    p: &HashMap<String, String>,
    now: Instant,
) -> TokenOutcome {
    let Some(token) = p.get("refresh_token") else {
        return TokenOutcome::error(400, 20001, "invalid_request", "refresh_token is missing.");
    };
    let Some(grant) = o.refresh_tokens.get_mut(token) else {
        return TokenOutcome::error(400, 20026, "invalid_grant", "The refresh token is invalid.");
    };
    match grant.state {
        RefreshState::Used => {
            o.refresh_reuse_violations += 1;
            tracing::warn!("sandbox: a used refresh token was sent again (20073)");
            return TokenOutcome::error(
                400,
                20073,
                "invalid_grant",
                "The refresh token has been used. Please note that a refresh token can only be used once.",
            );
        }
        RefreshState::Revoked => {
            return TokenOutcome::error(
                400,
                20064,
                "invalid_grant",
                "The refresh token has been revoked. Please note that a refresh token can only be used once.",
            );
        }
        RefreshState::Active => {}
    }
    if now >= grant.expires_at || now >= grant.authorized_at + shared.config.openapi.grant_max_age {
        return TokenOutcome::error(
            400,
            20037,
            "invalid_grant",
            "The refresh token has expired.",
        );
    }
    if !shared.config.openapi.refresh_enabled {
        return TokenOutcome::error(
            400,
            20074,
            "unauthorized_client",
            "The app is not allowed to refresh user_access_token.",
        );
    }
    grant.state = RefreshState::Used;
    let (open_id, scope, authorized_at) = (
        grant.open_id.clone(),
        grant.scope.clone(),
        grant.authorized_at,
    );
    issue(shared, o, &open_id, &scope, authorized_at, now)
}

fn device_grant(
    shared: &Shared,
    o: &mut OpenApiState,
    p: &HashMap<String, String>,
    now: Instant,
) -> TokenOutcome {
    let grant = p.get("device_code").and_then(|c| o.devices.get_mut(c));
    let Some(grant) = grant else {
        return TokenOutcome::device("invalid_grant", "The device code is invalid.");
    };
    if grant.redeemed {
        return TokenOutcome::device("invalid_grant", "The device code has been used.");
    }
    if now >= grant.expires_at {
        return TokenOutcome::device("expired_token", "The device code has expired.");
    }
    let too_fast = grant
        .last_poll
        .is_some_and(|last| now.saturating_duration_since(last) < grant.interval);
    grant.last_poll = Some(now);
    if too_fast {
        grant.interval += Duration::from_secs(5);
        return TokenOutcome::device(
            "slow_down",
            "Polling too fast; add 5 seconds to the interval.",
        );
    }
    match grant.decision.clone() {
        DeviceDecision::Pending => TokenOutcome::device(
            "authorization_pending",
            "The authorization request is still pending.",
        ),
        DeviceDecision::Denied => TokenOutcome::device(
            "access_denied",
            "The user denied the authorization request.",
        ),
        DeviceDecision::Approved(open_id) => {
            grant.redeemed = true;
            let scope = grant.scope.clone();
            issue(shared, o, &open_id, &scope, now, now)
        }
    }
}

/// Issues an access token (and a refresh token when `offline_access` is in `scope`).
fn issue(
    shared: &Shared,
    o: &mut OpenApiState,
    open_id: &str,
    scope: &str,
    authorized_at: Instant,
    now: Instant,
) -> TokenOutcome {
    let config = &shared.config.openapi;
    let access_token = random_id("eyJsandbox.uat-");
    o.access_tokens.insert(
        access_token.clone(),
        AccessGrant {
            open_id: open_id.into(),
            scope: scope.into(),
            expires_at: now + config.access_token_lifetime,
            revoked: false,
        },
    );
    let mut body = json!({
        "code": 0,
        "access_token": access_token,
        "expires_in": config.access_token_lifetime.as_secs(),
        "token_type": "Bearer",
        "scope": scope,
    });
    if scope.split(' ').any(|s| s == OFFLINE_ACCESS) {
        let refresh_token = random_id("eyJsandbox.urt-");
        let expires_at =
            (now + config.refresh_token_lifetime).min(authorized_at + config.grant_max_age);
        o.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshGrant {
                open_id: open_id.into(),
                scope: scope.into(),
                expires_at,
                authorized_at,
                state: RefreshState::Active,
            },
        );
        body["refresh_token"] = json!(refresh_token);
        body["refresh_token_expires_in"] =
            json!(expires_at.saturating_duration_since(now).as_secs());
    }
    TokenOutcome { status: 200, body }
}

/// `GET /open-apis/authen/v1/user_info` (§6).
async fn user_info(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let fault = {
        let mut state = shared.lock();
        state.openapi.user_info_requests += 1;
        state.openapi.take_fault(OpenApiRoute::UserInfo)
    };
    shared.notify();
    if let Some(answer) = fault.as_ref().and_then(|f| fault_answer(&shared, f, false)) {
        return answer;
    }
    let (status, body) = match bearer(&req) {
        None => (
            400,
            json!({"code": 99_991_661, "msg": "Missing access token for authorization."}),
        ),
        Some(token) => {
            let state = shared.lock();
            let now = state.openapi.now();
            match state.openapi.access_tokens.get(&token) {
                Some(g) if !g.revoked && now < g.expires_at => {
                    let config = &shared.config.openapi;
                    match config.user(&g.open_id) {
                        Some(u) => (
                            200,
                            json!({"code": 0, "msg": "success", "data": {
                                "name": u.name, "en_name": u.name,
                                "avatar_url": format!("https://example.test/avatar/{}.png", u.open_id),
                                "avatar_thumb": format!("https://example.test/avatar/{}_72.png", u.open_id),
                                "avatar_middle": format!("https://example.test/avatar/{}_240.png", u.open_id),
                                "avatar_big": format!("https://example.test/avatar/{}_640.png", u.open_id),
                                "open_id": u.open_id, "union_id": u.union_id,
                                "tenant_key": config.tenant_key,
                            }}),
                        ),
                        None => (200, json!({"code": 20008, "msg": "user not exist"})),
                    }
                }
                Some(g) if !g.revoked => (
                    400,
                    json!({"code": 99_991_677, "msg": "Authentication token expired."}),
                ),
                _ => (
                    200,
                    json!({"code": 20005, "msg": "invalid user_access_token"}),
                ),
            }
        }
    };
    let answer = json_answer(&shared, status, body);
    apply_delay(&fault).await;
    answer
}
