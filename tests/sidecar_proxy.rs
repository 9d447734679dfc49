//! The OpenAPI proxy's sidecar door (the official Lark CLI's auth-proxy protocol v1,
//! issue 16) against the sandbox, with a client written here from
//! `shared/docs/lark-cli-sidecar.md` (canonical string, body hash, HMAC-SHA256 — none of
//! the library's own signing code): user and bot calls succeed with the right token in
//! the signed header; every single tampering is refused with the protocol's status and
//! nothing reaches the sandbox; two clients bound to two users never get each other's
//! token; `lark-auth sidecar new-client` prints what a sandbox needs.

mod service_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use lark_auth::config::{SidecarClientConfig, SidecarIdentity};
use lark_auth::sandbox::apis::TASKS_PATH;
use lark_auth::secret::Secret;
use lark_auth::session::machine::SessionState;
use service_common::*;
use sha2::{Digest, Sha256};

const OTHER: &str = "ou_test_user_2";
const ALICE_KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const BOB_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const BOT_KEY: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const DOWNLOAD: &str = "/open-apis/drive/v1/medias/sandbox_bytes_100/download?x=1";
/// The largest body the door takes in these tests (`proxy.max_body_bytes`).
const LIMIT: usize = 256 * 1024;

/// One request as the sandboxed CLI sends it, before signing.
#[derive(Clone)]
struct Call {
    method: &'static str,
    target: String,
    path_and_query: String,
    identity: String,
    auth_header: String,
    body: Vec<u8>,
    timestamp: i64,
    version: String,
    key: String,
    extra: Vec<(String, String)>,
}

impl Call {
    fn get(key: &str, identity: &str, path_and_query: &str) -> Call {
        Call {
            method: "GET",
            target: "https://open.feishu.cn".into(),
            path_and_query: path_and_query.into(),
            identity: identity.into(),
            auth_header: "Authorization".into(),
            body: Vec::new(),
            timestamp: now(),
            version: "v1".into(),
            key: key.into(),
            extra: Vec::new(),
        }
    }

    /// The signed headers: the body hash, then HMAC-SHA256 (hex) under the key's text of
    /// version, method, host, path and query, body hash, timestamp, identity and auth
    /// header joined with `\n`.
    fn headers(&self) -> Vec<(String, String)> {
        let body_hash = hex::encode(Sha256::digest(&self.body));
        let host = self
            .target
            .split_once("://")
            .map_or(self.target.as_str(), |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string();
        let timestamp = self.timestamp.to_string();
        let canonical = [
            self.version.as_str(),
            self.method,
            host.as_str(),
            self.path_and_query.as_str(),
            body_hash.as_str(),
            timestamp.as_str(),
            self.identity.as_str(),
            self.auth_header.as_str(),
        ]
        .join("\n");
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.as_bytes()).unwrap();
        mac.update(canonical.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        let mut headers = vec![
            ("X-Lark-Proxy-Version".to_string(), self.version.clone()),
            ("X-Lark-Proxy-Target".to_string(), self.target.clone()),
            ("X-Lark-Proxy-Identity".to_string(), self.identity.clone()),
            (
                "X-Lark-Proxy-Auth-Header".to_string(),
                self.auth_header.clone(),
            ),
            ("X-Lark-Proxy-Timestamp".to_string(), timestamp),
            ("X-Lark-Body-SHA256".to_string(), body_hash),
            ("X-Lark-Proxy-Signature".to_string(), signature),
        ];
        headers.extend(self.extra.iter().cloned());
        headers
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sends `call` signed, then with `tamper` applied to what goes on the wire: (method,
/// path and query, headers, body).
async fn send_tampered(
    i: &Instance,
    call: &Call,
    tamper: impl FnOnce(&mut String, &mut String, &mut Vec<(String, String)>, &mut Vec<u8>),
) -> (u16, serde_json::Value, Vec<(String, String)>) {
    let mut method = call.method.to_string();
    let mut path = call.path_and_query.clone();
    let mut headers = call.headers();
    let mut body = call.body.clone();
    tamper(&mut method, &mut path, &mut headers, &mut body);
    let addr = i.handle.sidecar_addr().expect("sidecar started");
    let mut request = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .request(method.parse().unwrap(), format!("http://{addr}{path}"));
    for (k, v) in &headers {
        request = request.append_header((k.as_str(), v.as_str()));
    }
    let mut res = request.send_body(body).await.expect("an answer");
    let status = res.status().as_u16();
    let answer_headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let bytes = res.body().limit(1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, answer_headers)
}

async fn send(i: &Instance, call: &Call) -> (u16, serde_json::Value, Vec<(String, String)>) {
    send_tampered(i, call, |_, _, _, _| {}).await
}

fn client(
    name: &str,
    key: &str,
    open_id: &str,
    identities: &[SidecarIdentity],
) -> SidecarClientConfig {
    SidecarClientConfig {
        name: name.into(),
        key_env: format!("KEY_{name}"),
        open_id: open_id.into(),
        identities: identities.to_vec(),
        key: Some(Secret::new(key.into())),
    }
}

async fn start() -> Instance {
    use SidecarIdentity::{Bot, User};
    start_instance_with(|_, config| {
        config.proxy.max_body_bytes = LIMIT as u64;
        config.sidecar.listen = "127.0.0.1:0".into();
        config.sidecar.clients = vec![
            client("alice", ALICE_KEY, USER, &[User, Bot]),
            client("bob", BOB_KEY, OTHER, &[User]),
            client("bot-only", BOT_KEY, "", &[User, Bot]),
        ];
    })
    .await
}

/// Authorizes `open_id` through a card and the device page.
async fn authorize_as(i: &Instance, open_id: &str) {
    let view = i.handle.authorize(open_id, vec![]).await.expect("started");
    let n = i.sandbox.sent_cards().len();
    let cards = i.sandbox.wait_for_sent_cards(n + 1, WAIT).await.unwrap();
    let card = &cards[n];
    let card_token = i.sandbox.issue_card_update_token(&card.message_id);
    i.sandbox
        .push_event(&click_json(
            &format!("ev_click_{}", view.session_id),
            &view.session_id,
            open_id,
            "authorize",
            card_token.expose(),
            &card.message_id,
        ))
        .unwrap();
    let user_code = query_param(&authorize_url(&card.card), "user_code").expect("user code");
    let identity_checks = i.sandbox.user_info_requests();
    i.sandbox.approve_device(&user_code, open_id).unwrap();
    let handle = &i.handle;
    let session_id = view.session_id.clone();
    eventually("the session is authorized", || {
        let session_id = session_id.clone();
        async move {
            handle
                .session(&session_id)
                .await
                .ok()
                .flatten()
                .filter(|v| v.state == SessionState::Authorized)
        }
    })
    .await;
    // The session's own identity check (user_info with the new token) may land after.
    let sandbox = &i.sandbox;
    eventually("the identity check reached the sandbox", || async move {
        (sandbox.user_info_requests() > identity_checks).then_some(())
    })
    .await;
}

/// What reached the sandbox so far: plain API requests and `user_info` calls.
fn reached(i: &Instance) -> (usize, usize) {
    (
        i.sandbox.api_requests().len(),
        i.sandbox.user_info_requests(),
    )
}

fn metric(i: &Instance, line_start: &str) -> f64 {
    let text = i.handle.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
}

#[actix_rt::test]
async fn user_and_bot_calls_get_the_right_token_in_the_signed_header() {
    let i = start().await;
    authorize_as(&i, USER).await;
    let user_token = i.handle.token(USER).await.unwrap().token;

    // What lark-cli calls first: user_info as the user.
    let (status, body, _) = send(
        &i,
        &Call::get(ALICE_KEY, "user", "/open-apis/authen/v1/user_info"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["open_id"], USER);

    // A download as the user, with the CLI's sentinel token and smuggled headers.
    let mut call = Call::get(ALICE_KEY, "user", DOWNLOAD);
    call.extra = vec![
        ("Authorization".into(), "Bearer sentinel-or-stolen".into()),
        ("X-Lark-MCP-UAT".into(), "smuggled".into()),
        ("Cookie".into(), "a=b".into()),
        ("X-Custom".into(), "kept".into()),
    ];
    let (status, _, _) = send(&i, &call).await;
    assert_eq!(status, 200);
    let seen = i.sandbox.api_requests();
    let seen = seen.last().unwrap();
    assert_eq!(seen.path_and_query, DOWNLOAD);
    assert_eq!(
        seen.header("authorization"),
        vec![format!("Bearer {}", user_token.expose()).as_str()]
    );
    assert!(seen.header("x-lark-mcp-uat").is_empty());
    assert!(seen.header("cookie").is_empty());
    assert_eq!(seen.header("x-custom"), vec!["kept"]);
    for (name, _) in &seen.headers {
        assert!(
            !name.starts_with("x-lark-proxy-") && name != "x-lark-body-sha256",
            "{name} forwarded"
        );
    }

    // The bot identity: the tenant token, `Bearer ` in Authorization.
    let (status, body, _) = send(
        &i,
        &Call::get(ALICE_KEY, "bot", "/open-apis/tenant/v2/tenant/query"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let tenant_bearer = i
        .sandbox
        .api_requests()
        .last()
        .unwrap()
        .bearer()
        .unwrap()
        .to_string();
    assert_ne!(tenant_bearer, *user_token.expose());

    // The MCP headers take the bare token (the sandbox wants Authorization, so it refuses;
    // what matters is where the token went).
    let mut call = Call::get(ALICE_KEY, "user", DOWNLOAD);
    call.auth_header = "X-Lark-MCP-UAT".into();
    send(&i, &call).await;
    let seen = i.sandbox.api_requests();
    let seen = seen.last().unwrap();
    assert_eq!(
        seen.header("x-lark-mcp-uat"),
        vec![user_token.expose().as_str()]
    );
    assert!(seen.header("authorization").is_empty());
    let mut call = Call::get(ALICE_KEY, "bot", DOWNLOAD);
    call.auth_header = "X-Lark-MCP-TAT".into();
    send(&i, &call).await;
    let seen = i.sandbox.api_requests();
    assert_eq!(
        seen.last().unwrap().header("x-lark-mcp-tat"),
        vec![tenant_bearer.as_str()]
    );

    // A body both ways (upload), the port-443 form of the target.
    let mut call = Call::get(ALICE_KEY, "user", "/open-apis/drive/v1/medias/upload_all");
    call.method = "POST";
    call.target = "https://open.feishu.cn:443".into();
    call.body = (0..200_000u32).map(|n| (n % 251) as u8).collect();
    call.extra = vec![("Content-Type".into(), "application/octet-stream".into())];
    let (status, body, _) = send(&i, &call).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["size"], 200_000);
    assert_eq!(
        body["data"]["sha256"],
        hex::encode(Sha256::digest(&call.body))
    );
    // Sent upstream in slices of the held body, still with its length (not chunked).
    let seen = i.sandbox.api_requests();
    let seen = seen.last().unwrap();
    assert_eq!(seen.header("content-length"), vec!["200000"]);
    assert!(seen.header("transfer-encoding").is_empty());
    assert_eq!(
        metric(
            &i,
            "lark_auth_openapi_proxy_requests_total{door=\"sidecar\",identity=\"user\",status=\"2xx\"}"
        ),
        3.0
    );
}

#[actix_rt::test]
async fn tokens_are_kept_fresh_and_missing_scopes_start_an_authorization() {
    let i = start().await;
    authorize_as(&i, USER).await;
    let first = i.handle.token(USER).await.unwrap().token;
    i.sandbox.expire_access_tokens(USER);
    let before = i.sandbox.api_requests().len();
    let (status, _, _) = send(&i, &Call::get(ALICE_KEY, "user", DOWNLOAD)).await;
    assert_eq!(status, 200);
    let seen = i.sandbox.api_requests();
    assert_eq!(seen.len(), before + 2, "one call, one retry");
    assert_eq!(seen[before].bearer(), Some(first.expose().as_str()));
    assert_ne!(seen[before + 1].bearer(), Some(first.expose().as_str()));
    assert_eq!(
        metric(
            &i,
            "lark_auth_openapi_proxy_retries_total{door=\"sidecar\",identity=\"user\"}"
        ),
        1.0
    );

    let (status, body, headers) = send(&i, &Call::get(ALICE_KEY, "user", TASKS_PATH)).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], 99_991_679, "the platform's answer, unchanged");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-lark-auth-session" && !v.is_empty()),
        "{headers:?}"
    );
}

#[actix_rt::test]
async fn no_grant_needs_reauth_and_rate_limits_answer_as_on_the_rest_door() {
    let i = start().await;
    // Alice acts as USER, who has no grant yet: 404, nothing sent.
    let (status, body, _) = send(&i, &Call::get(ALICE_KEY, "user", DOWNLOAD)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "no_grant");
    assert_eq!(reached(&i).0, 0, "nothing sent upstream");

    // A rate-limit answer passes through with its headers, not retried.
    authorize_as(&i, USER).await;
    i.sandbox.inject_openapi_fault(
        lark_auth::sandbox::OpenApiRoute::Api,
        lark_auth::sandbox::OpenApiFault::RateLimited { reset_secs: 7 },
    );
    let (status, body, headers) = send(&i, &Call::get(ALICE_KEY, "user", DOWNLOAD)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], 99_991_400);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-ogw-ratelimit-limit").as_deref(), Some("50"));
    assert_eq!(header("x-ogw-ratelimit-reset").as_deref(), Some("7"));
    assert_eq!(reached(&i).0, 1, "not retried");

    // The user revokes the app: the refresh after the expired token is refused → 409,
    // then nothing is sent at all.
    i.sandbox.revoke_user_grants(USER);
    i.sandbox.expire_access_tokens(USER);
    let (status, body, _) = send(&i, &Call::get(ALICE_KEY, "user", DOWNLOAD)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "needs_reauth");
    let sent = reached(&i).0;
    let (status, _, _) = send(&i, &Call::get(ALICE_KEY, "user", DOWNLOAD)).await;
    assert_eq!(status, 409);
    assert_eq!(
        reached(&i).0,
        sent,
        "nothing sent for a grant in needs_reauth"
    );
}

#[actix_rt::test]
async fn a_50_mib_download_streams_through_the_sidecar_door_intact() {
    use futures_util::StreamExt as _;
    const SIZE: u64 = 50 << 20;
    let i = start().await;
    authorize_as(&i, USER).await;
    let call = Call::get(
        ALICE_KEY,
        "user",
        &format!("/open-apis/drive/v1/medias/sandbox_bytes_{SIZE}/download"),
    );
    let addr = i.handle.sidecar_addr().expect("sidecar started");
    let mut request = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
        .get(format!("http://{addr}{}", call.path_and_query));
    for (k, v) in call.headers() {
        request = request.append_header((k, v));
    }
    let mut res = request.send().await.expect("an answer");
    assert_eq!(res.status().as_u16(), 200);
    let mut offset = 0u64;
    while let Some(chunk) = res.next().await {
        for b in chunk.unwrap().iter() {
            assert_eq!(
                *b,
                lark_auth::sandbox::apis::download_byte(offset),
                "byte {offset}"
            );
            offset += 1;
        }
    }
    assert_eq!(offset, SIZE);
}

#[actix_rt::test]
async fn every_single_tampering_is_refused_and_nothing_reaches_the_sandbox() {
    let i = start().await;
    authorize_as(&i, USER).await;
    let before = reached(&i);
    let base = Call::get(ALICE_KEY, "user", DOWNLOAD);
    let (status, _, _) = send(&i, &base).await;
    assert_eq!(status, 200, "the untampered call passes");
    let mut expect_refused = Vec::new();

    // Changed on the wire after signing.
    type Tamper = fn(&mut String, &mut String, &mut Vec<(String, String)>, &mut Vec<u8>);
    let wire: Vec<(&str, Tamper, u16, &str)> = vec![
        (
            "body",
            |_, _, _, b| b.extend_from_slice(b"x"),
            400,
            "body_sha256_mismatch",
        ),
        (
            "body with its hash",
            |_, _, h, b| {
                b.extend_from_slice(b"x");
                let hash = hex::encode(Sha256::digest(&*b));
                h.retain(|(k, _)| k != "X-Lark-Body-SHA256");
                h.push(("X-Lark-Body-SHA256".into(), hash));
            },
            401,
            "invalid_signature",
        ),
        (
            "path",
            |_, p, _, _| *p = p.replace("bytes_100", "bytes_101"),
            401,
            "invalid_signature",
        ),
        (
            "query",
            |_, p, _, _| *p = p.replace("x=1", "x=2"),
            401,
            "invalid_signature",
        ),
        (
            "method",
            |m, _, _, _| *m = "DELETE".into(),
            401,
            "invalid_signature",
        ),
        (
            "identity",
            |_, _, h, _| {
                h.retain(|(k, _)| k != "X-Lark-Proxy-Identity");
                h.push(("X-Lark-Proxy-Identity".into(), "bot".into()));
            },
            401,
            "invalid_signature",
        ),
        (
            "auth header",
            |_, _, h, _| {
                h.retain(|(k, _)| k != "X-Lark-Proxy-Auth-Header");
                h.push(("X-Lark-Proxy-Auth-Header".into(), "X-Lark-MCP-UAT".into()));
            },
            401,
            "invalid_signature",
        ),
        (
            "target host",
            |_, _, h, _| {
                h.retain(|(k, _)| k != "X-Lark-Proxy-Target");
                h.push((
                    "X-Lark-Proxy-Target".into(),
                    "https://accounts.feishu.cn".into(),
                ));
            },
            401,
            "invalid_signature",
        ),
        (
            "no signature",
            |_, _, h, _| h.retain(|(k, _)| k != "X-Lark-Proxy-Signature"),
            401,
            "invalid_signature",
        ),
        (
            "no timestamp",
            |_, _, h, _| h.retain(|(k, _)| k != "X-Lark-Proxy-Timestamp"),
            400,
            "missing_header",
        ),
        (
            "no identity",
            |_, _, h, _| h.retain(|(k, _)| k != "X-Lark-Proxy-Identity"),
            400,
            "missing_header",
        ),
    ];
    for (what, tamper, status, code) in wire {
        let (got, body, _) = send_tampered(&i, &base, tamper).await;
        expect_refused.push((what.to_string(), got, body, status, code));
    }

    // Signed as sent, but not acceptable.
    let mut signed: Vec<(&str, Call, u16, &str)> = Vec::new();
    let mut old = base.clone();
    old.timestamp -= 61;
    signed.push(("timestamp 61 s old", old, 401, "invalid_timestamp"));
    let mut ahead = base.clone();
    ahead.timestamp += 61;
    signed.push(("timestamp 61 s ahead", ahead, 401, "invalid_timestamp"));
    let mut wrong_key = base.clone();
    wrong_key.key = "f".repeat(64);
    signed.push(("wrong key", wrong_key, 401, "invalid_signature"));
    let mut v2 = base.clone();
    v2.version = "v2".into();
    signed.push(("version v2", v2, 400, "unsupported_version"));
    let mut http = base.clone();
    http.target = "http://open.feishu.cn".into();
    signed.push(("http target", http, 403, "invalid_target"));
    let mut with_path = base.clone();
    with_path.target = "https://open.feishu.cn/open-apis".into();
    signed.push(("target with a path", with_path, 403, "invalid_target"));
    let mut foreign = base.clone();
    foreign.target = "https://evil.example.com".into();
    signed.push(("foreign host", foreign, 403, "target_host_not_allowed"));
    let mut other_brand = base.clone();
    other_brand.target = "https://open.larksuite.com".into();
    signed.push((
        "the other brand's host",
        other_brand,
        403,
        "target_host_not_allowed",
    ));
    let mut cookie = base.clone();
    cookie.auth_header = "Cookie".into();
    signed.push((
        "Cookie as auth header",
        cookie,
        403,
        "auth_header_not_allowed",
    ));
    let mut tat_as_user = base.clone();
    tat_as_user.auth_header = "X-Lark-MCP-TAT".into();
    signed.push((
        "the TAT header for a user",
        tat_as_user,
        403,
        "auth_header_not_allowed",
    ));
    let mut admin = base.clone();
    admin.identity = "admin".into();
    signed.push(("unknown identity", admin, 403, "identity_not_allowed"));
    let unbound = Call::get(BOT_KEY, "user", DOWNLOAD);
    signed.push((
        "user asked by a client bound to no user",
        unbound,
        403,
        "no_user_bound",
    ));
    let bob_bot = Call::get(BOB_KEY, "bot", DOWNLOAD);
    signed.push((
        "an identity the client may not use",
        bob_bot,
        403,
        "identity_not_allowed",
    ));
    let mut dots = base.clone();
    dots.path_and_query = "/open-apis/../callback/ws/endpoint".into();
    signed.push(("a path out of /open-apis/", dots, 400, "invalid_path"));
    let mut large = base.clone();
    large.method = "POST";
    large.path_and_query = "/open-apis/drive/v1/medias/upload_all".into();
    large.body = vec![1u8; LIMIT + 1];
    signed.push((
        "a body over proxy.max_body_bytes",
        large,
        413,
        "payload_too_large",
    ));
    for (what, call, status, code) in signed {
        let (got, body, _) = send(&i, &call).await;
        expect_refused.push((what.to_string(), got, body, status, code));
    }

    let after_base = reached(&i);
    for (what, got, body, status, code) in &expect_refused {
        assert_eq!(
            (*got, body["error"].as_str()),
            (*status, Some(*code)),
            "{what}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    assert_eq!(
        after_base,
        (before.0 + 1, before.1),
        "only the untampered call reached the sandbox"
    );
    let refused = metric(
        &i,
        "lark_auth_openapi_proxy_requests_total{door=\"sidecar\",identity=\"user\",status=\"4xx\"}",
    );
    assert!(refused >= 10.0, "{refused} refusals counted");
}

#[actix_rt::test]
async fn two_clients_bound_to_two_users_never_get_each_others_token() {
    let i = start().await;
    authorize_as(&i, USER).await;
    authorize_as(&i, OTHER).await;
    let alice_token = i.handle.token(USER).await.unwrap().token;
    let bob_token = i.handle.token(OTHER).await.unwrap().token;
    assert_ne!(alice_token, bob_token);

    for _ in 0..3 {
        for (key, open_id, token) in [
            (ALICE_KEY, USER, &alice_token),
            (BOB_KEY, OTHER, &bob_token),
        ] {
            let (status, body, _) = send(
                &i,
                &Call::get(key, "user", "/open-apis/authen/v1/user_info"),
            )
            .await;
            assert_eq!(
                (status, body["data"]["open_id"].as_str()),
                (200, Some(open_id))
            );
            send(&i, &Call::get(key, "user", DOWNLOAD)).await;
            let seen = i.sandbox.api_requests();
            assert_eq!(seen.last().unwrap().bearer(), Some(token.expose().as_str()));
        }
    }
    // Bob's signature with Alice's identity headers is still Bob's: his user.
    let (status, body, _) = send(
        &i,
        &Call::get(BOB_KEY, "user", "/open-apis/authen/v1/user_info"),
    )
    .await;
    assert_eq!(
        (status, body["data"]["open_id"].as_str()),
        (200, Some(OTHER))
    );
}

#[test]
fn new_client_prints_a_fresh_key_the_sandbox_environment_and_the_config_lines() {
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lark-auth"))
            .args([
                "sidecar",
                "new-client",
                "agent-alice",
                "--open-id",
                "ou_alice_1",
            ])
            .env_remove("LARK_AUTH_SIDECAR_LISTEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let key_of = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("export LARKSUITE_CLI_PROXY_KEY="))
            .map(|k| k.trim_matches('\'').to_string())
            .expect("the key line")
    };
    let key = key_of(&first);
    assert_eq!(key.len(), 64);
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_ne!(key, key_of(&run()), "a fresh key each time");
    for line in [
        "export LARKSUITE_CLI_AUTH_PROXY=",
        "export LARKSUITE_CLI_APP_ID=",
        "export LARKSUITE_CLI_BRAND=feishu",
        "[[sidecar.clients]]",
        "name = \"agent-alice\"",
        "key_env = \"LARK_AUTH_SIDECAR_KEY_AGENT_ALICE\"",
        "open_id = \"ou_alice_1\"",
        "identities = [\"user\", \"bot\"]",
    ] {
        assert!(first.contains(line), "no `{line}` in\n{first}");
    }
    // The key in the server's environment line is the same one.
    assert!(
        first.contains(&format!("LARK_AUTH_SIDECAR_KEY_AGENT_ALICE={key}")),
        "{first}"
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_lark-auth"))
        .args(["sidecar", "new-client", "agent-x", "--open-id", "alice"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn check_config_shows_the_clients_never_their_keys_and_bad_ones_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let write = |clients: &str| {
        std::fs::write(
            &path,
            format!(
                "[vault]\npath = \"{}\"\n[sidecar]\nlisten = \"127.0.0.1:16384\"\n{clients}",
                dir.path().join("vault").display()
            ),
        )
        .unwrap();
    };
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lark-auth"));
        cmd.args(["check-config", "--config", path.to_str().unwrap()])
            .env("LARK_APP_ID", "cli_check")
            .env("LARK_APP_SECRET", "app-secret-value")
            .env(
                "LARK_AUTH_VAULT_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            )
            .env("LARK_AUTH_API_TOKEN", "api-token-value")
            .env_remove("KEY_ALICE")
            .env_remove("KEY_BOT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let two = "[[sidecar.clients]]\nname = \"alice\"\nkey_env = \"KEY_ALICE\"\nopen_id = \"ou_alice_1\"\n\
               [[sidecar.clients]]\nname = \"bot\"\nkey_env = \"KEY_BOT\"\nidentities = [\"bot\"]\n";
    write(two);
    let (code, stdout, stderr) = run(&[("KEY_ALICE", ALICE_KEY), ("KEY_BOT", BOT_KEY)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("KEY_ALICE") && stdout.contains("ou_alice_1"),
        "{stdout}"
    );
    for key in [ALICE_KEY, BOT_KEY] {
        assert!(!stdout.contains(key) && !stderr.contains(key), "{stdout}");
    }

    let (code, _, stderr) = run(&[("KEY_ALICE", ALICE_KEY)]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("KEY_BOT"), "{stderr}");
    let (code, _, stderr) = run(&[("KEY_ALICE", ALICE_KEY), ("KEY_BOT", "too-short")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("shorter than 32") && !stderr.contains("too-short"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&[("KEY_ALICE", ALICE_KEY), ("KEY_BOT", ALICE_KEY)]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("same key") && !stderr.contains(ALICE_KEY),
        "{stderr}"
    );

    write(&two.replace("name = \"bot\"", "name = \"alice\""));
    let (code, _, stderr) = run(&[("KEY_ALICE", ALICE_KEY), ("KEY_BOT", BOT_KEY)]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("configured twice"), "{stderr}");
    write(two);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("127.0.0.1:16384", "nowhere")).unwrap();
    let (code, _, stderr) = run(&[("KEY_ALICE", ALICE_KEY), ("KEY_BOT", BOT_KEY)]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("sidecar.listen"), "{stderr}");
}
