//! The OpenAPI proxy's REST door (`ANY /v1/openapi/{open_id}/open-apis/{path}`, issue 16)
//! against the sandbox: the token injected, kept fresh (one refresh and one retry, never
//! more), refusals with nothing sent upstream, the app identity, bodies both ways, rate
//! limits and the caller's own headers.

mod service_common;

use std::time::Duration;

use futures_util::StreamExt as _;
use lark_auth::sandbox::apis::download_byte;
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute};
use lark_auth::session::machine::SessionState;
use service_common::*;

const OTHER: &str = "ou_test_user_2";

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
}

fn url(i: &Instance, open_id: &str, path: &str) -> String {
    format!("{}/v1/openapi/{open_id}{path}", i.base_url())
}

/// `GET path` through the REST door as `open_id` (`@app`: the app), with the API token.
async fn get(i: &Instance, open_id: &str, path: &str) -> awc::ClientResponse {
    client()
        .get(url(i, open_id, path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
}

/// Authorizes `USER` for `scopes` (besides `offline_access`) through a card and the
/// device page.
async fn authorize_for(i: &Instance, scopes: &[&str]) {
    let view = i
        .handle
        .authorize(USER, scopes.iter().map(|s| s.to_string()).collect())
        .await
        .expect("started");
    let n = i.sandbox.sent_cards().len();
    answer_card(i, n, &view.session_id, UserChoice::Approve).await;
    wait_authorized(i, &view.session_id).await;
}

async fn wait_authorized(i: &Instance, session_id: &str) {
    let handle = &i.handle;
    eventually("the session is authorized", || async move {
        handle
            .session(session_id)
            .await
            .ok()
            .flatten()
            .filter(|v| v.state == SessionState::Authorized)
    })
    .await;
}

async fn json_of(res: &mut awc::ClientResponse) -> serde_json::Value {
    res.json().limit(1 << 20).await.expect("a JSON body")
}

fn refreshes(i: &Instance) -> usize {
    i.sandbox
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count()
}

fn metric(i: &Instance, line_start: &str) -> f64 {
    let text = i.handle.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
}

#[actix_rt::test]
async fn the_users_fresh_token_is_injected_and_the_callers_own_headers_are_not_forwarded() {
    let i = start_instance().await;
    // Every family is there at 0 from the first scrape.
    assert_eq!(
        metric(
            &i,
            "lark_auth_openapi_proxy_requests_total{door=\"rest\",identity=\"user\",status=\"2xx\"}"
        ),
        0.0
    );
    authorize_user(&i).await;
    let token = i.handle.token(USER).await.unwrap().token;

    let mut res = client()
        .get(url(
            &i,
            USER,
            "/open-apis/drive/v1/medias/sandbox_bytes_1000/download?extra=1&b=%20x",
        ))
        .bearer_auth(API_TOKEN)
        .insert_header(("X-Custom", "kept"))
        .insert_header(("Cookie", "session=lark-auth-caller"))
        .insert_header(("X-Lark-Proxy-Target", "https://evil.example"))
        .insert_header(("Proxy-Authorization", "Basic c2VjcmV0"))
        .insert_header(("Accept-Encoding", "gzip, br"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        res.headers().contains_key("x-tt-logid"),
        "upstream headers come back"
    );
    let body = res.body().limit(1 << 20).await.unwrap();
    assert_eq!(body.len(), 1000);
    assert!(
        body.iter()
            .enumerate()
            .all(|(n, b)| *b == download_byte(n as u64))
    );

    let seen = i.sandbox.api_requests();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(
        seen.path_and_query,
        "/open-apis/drive/v1/medias/sandbox_bytes_1000/download?extra=1&b=%20x"
    );
    assert_eq!(seen.header("authorization").len(), 1);
    assert_eq!(seen.bearer(), Some(token.expose().as_str()));
    assert_eq!(seen.header("x-custom"), vec!["kept"]);
    // Answers must come uncompressed for the token-expired check.
    assert_eq!(seen.header("accept-encoding"), vec!["identity"]);
    for dropped in ["cookie", "x-lark-proxy-target", "proxy-authorization"] {
        assert!(seen.header(dropped).is_empty(), "{dropped} was forwarded");
    }

    // user_info as the user (what lark-cli calls first).
    let mut res = get(&i, USER, "/open-apis/authen/v1/user_info").await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(json_of(&mut res).await["data"]["open_id"], USER);

    // Without the control API's token: 401, nothing sent.
    let res = client()
        .get(url(&i, USER, "/open-apis/authen/v1/user_info"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // A path that leaves /open-apis/: 400, nothing sent.
    let mut res = get(&i, USER, "/open-apis/../callback/ws/endpoint").await;
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(json_of(&mut res).await["error"], "invalid_path");
    assert_eq!(i.sandbox.api_requests().len(), 1);
    assert_eq!(
        metric(
            &i,
            "lark_auth_openapi_proxy_requests_total{door=\"rest\",identity=\"user\",status=\"2xx\"}"
        ),
        2.0
    );
}

#[actix_rt::test]
async fn an_expired_token_is_refreshed_once_and_the_call_retried_once() {
    let i = start_instance().await;
    authorize_user(&i).await;
    let first = i.handle.token(USER).await.unwrap().token;
    let path = "/open-apis/drive/v1/medias/sandbox_bytes_10/download";
    let before = refreshes(&i);

    i.sandbox.expire_access_tokens(USER);
    let res = get(&i, USER, path).await;
    assert_eq!(res.status().as_u16(), 200);
    let seen = i.sandbox.api_requests();
    assert_eq!(seen.len(), 2, "one call, one retry");
    assert_eq!(seen[0].bearer(), Some(first.expose().as_str()));
    assert_eq!(seen[0].code, 99_991_677);
    let second = i.handle.token(USER).await.unwrap().token;
    assert_ne!(second, first);
    assert_eq!(seen[1].bearer(), Some(second.expose().as_str()));
    assert_eq!(seen[1].code, 0);
    assert_eq!(refreshes(&i), before + 1, "one refresh");
    assert_eq!(
        metric(
            &i,
            "lark_auth_openapi_proxy_retries_total{door=\"rest\",identity=\"user\"}"
        ),
        1.0
    );

    // Concurrent callers refused with the same token share one refresh.
    i.sandbox.expire_access_tokens(USER);
    let calls = (0..5).map(|_| {
        client()
            .get(url(&i, USER, path))
            .bearer_auth(API_TOKEN)
            .send()
    });
    for res in futures_util::future::join_all(calls).await {
        assert_eq!(res.unwrap().status().as_u16(), 200);
    }
    assert_eq!(refreshes(&i), before + 2, "one refresh for all five");

    // Never more than one retry: a second token-expired answer is passed back.
    let n = i.sandbox.api_requests().len();
    for _ in 0..3 {
        i.sandbox
            .inject_openapi_fault(OpenApiRoute::Api, OpenApiFault::ApiCode(99_991_677));
    }
    let mut res = get(&i, USER, path).await;
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(json_of(&mut res).await["code"], 99_991_677);
    assert_eq!(
        i.sandbox.api_requests().len(),
        n + 2,
        "the call and one retry"
    );
    assert_eq!(refreshes(&i), before + 3);
    assert_eq!(i.sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn no_grant_is_404_and_needs_reauth_is_409_with_nothing_sent_upstream() {
    let i = start_instance().await;
    let mut res = get(&i, OTHER, "/open-apis/authen/v1/user_info").await;
    assert_eq!(res.status().as_u16(), 404);
    assert_eq!(json_of(&mut res).await["error"], "no_grant");
    assert_eq!(i.sandbox.user_info_requests(), 0);

    let mut res = get(&i, "ou_a%2F..", "/open-apis/authen/v1/user_info").await;
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(json_of(&mut res).await["error"], "invalid_open_id");

    // The user revokes the app: the expired token's refresh is refused (20064).
    authorize_user(&i).await;
    i.sandbox.revoke_user_grants(USER);
    i.sandbox.expire_access_tokens(USER);
    let path = "/open-apis/drive/v1/medias/sandbox_bytes_10/download";
    let mut res = get(&i, USER, path).await;
    assert_eq!(res.status().as_u16(), 409);
    assert_eq!(json_of(&mut res).await["error"], "needs_reauth");
    assert_eq!(i.sandbox.api_requests().len(), 1);
    // Now the grant is needs_reauth: nothing is sent at all.
    let mut res = get(&i, USER, path).await;
    assert_eq!(res.status().as_u16(), 409);
    assert_eq!(json_of(&mut res).await["error"], "needs_reauth");
    assert_eq!(i.sandbox.api_requests().len(), 1);
}

#[actix_rt::test]
async fn the_app_identity_uses_the_tenant_token_and_renews_it_once_on_99991663() {
    let i = start_instance().await;
    let path = "/open-apis/tenant/v2/tenant/query";
    let mut res = get(&i, "@app", path).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        json_of(&mut res).await["data"]["tenant"]["tenant_key"],
        "tk_test_tenant_0001"
    );
    let seen = i.sandbox.api_requests();
    let first = seen[0].bearer().unwrap().to_string();
    assert!(first.starts_with("t-"), "{first}");

    let fetched = i.sandbox.tenant_token_requests();
    i.sandbox.invalidate_tenant_tokens();
    let res = get(&i, "@app", path).await;
    assert_eq!(res.status().as_u16(), 200);
    let seen = i.sandbox.api_requests();
    assert_eq!(seen.len(), 3, "one call, one retry");
    assert_eq!(seen[1].code, 99_991_663);
    assert_eq!(seen[1].bearer(), Some(first.as_str()));
    assert_ne!(seen[2].bearer(), Some(first.as_str()));
    assert_eq!(seen[2].code, 0);
    assert_eq!(i.sandbox.tenant_token_requests(), fetched + 1);

    // A user-token-only API answers the app 99991668: passed back, not retried.
    let mut res = get(&i, "@app", "/open-apis/task/v2/tasks").await;
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(json_of(&mut res).await["code"], 99_991_668);
    assert_eq!(i.sandbox.api_requests().len(), 4);
    assert_eq!(
        metric(
            &i,
            "lark_auth_openapi_proxy_retries_total{door=\"rest\",identity=\"app\"}"
        ),
        1.0
    );
}

#[actix_rt::test]
async fn uploads_within_the_limit_pass_and_larger_ones_get_413_with_nothing_sent() {
    const LIMIT: usize = 4 << 20;
    let i = start_instance_with(|_, config| config.proxy.max_body_bytes = LIMIT as u64).await;
    authorize_user(&i).await;
    let body: Vec<u8> = (0..LIMIT).map(|n| (n % 253) as u8).collect();
    let sha256: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut res = client()
        .post(url(&i, USER, "/open-apis/drive/v1/medias/upload_all"))
        .bearer_auth(API_TOKEN)
        .content_type("application/octet-stream")
        .send_body(body.clone())
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let answer = json_of(&mut res).await;
    assert_eq!(answer["data"]["size"], LIMIT as u64);
    assert_eq!(answer["data"]["sha256"], sha256);
    assert_eq!(answer["data"]["content_type"], "application/octet-stream");

    let mut larger = body;
    larger.push(0);
    let mut res = client()
        .post(url(&i, USER, "/open-apis/drive/v1/medias/upload_all"))
        .bearer_auth(API_TOKEN)
        .send_body(larger)
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    assert_eq!(json_of(&mut res).await["error"], "payload_too_large");
    assert_eq!(i.sandbox.api_requests().len(), 1, "nothing sent upstream");
}

#[actix_rt::test]
async fn a_50_mib_download_streams_through_intact() {
    const SIZE: u64 = 50 << 20;
    let i = start_instance().await;
    authorize_user(&i).await;
    i.sandbox.hold_downloads();
    let mut res = get(
        &i,
        USER,
        &format!("/open-apis/drive/v1/medias/sandbox_bytes_{SIZE}/download"),
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/octet-stream"
    );
    // The first bytes arrive while the sandbox holds the rest back: the answer streams
    // through, it is not gathered first.
    let mut offset = 0u64;
    let mut chunks = 0usize;
    let first = tokio::time::timeout(WAIT, res.next())
        .await
        .expect("the first bytes arrive while the rest is held")
        .unwrap()
        .unwrap();
    for b in first.iter() {
        assert_eq!(*b, download_byte(offset), "byte {offset}");
        offset += 1;
    }
    assert!(offset < SIZE);
    i.sandbox.release_downloads();
    while let Some(chunk) = res.next().await {
        let chunk = chunk.unwrap();
        for b in chunk.iter() {
            assert_eq!(*b, download_byte(offset), "byte {offset}");
            offset += 1;
        }
        chunks += 1;
    }
    assert_eq!(offset, SIZE);
    assert!(chunks > 0);
}

#[actix_rt::test]
async fn rate_limit_answers_pass_through_with_their_headers() {
    let i = start_instance().await;
    authorize_user(&i).await;
    i.sandbox.inject_openapi_fault(
        OpenApiRoute::Api,
        OpenApiFault::RateLimited { reset_secs: 7 },
    );
    let mut res = get(
        &i,
        USER,
        "/open-apis/drive/v1/medias/sandbox_bytes_10/download",
    )
    .await;
    assert_eq!(res.status().as_u16(), 429);
    assert_eq!(res.headers().get("x-ogw-ratelimit-limit").unwrap(), "50");
    assert_eq!(res.headers().get("x-ogw-ratelimit-reset").unwrap(), "7");
    assert_eq!(json_of(&mut res).await["code"], 99_991_400);
    assert_eq!(i.sandbox.api_requests().len(), 1, "not retried");
}

#[actix_rt::test]
async fn a_missing_scope_is_passed_back_and_one_merged_authorization_starts() {
    let i = start_instance().await;
    authorize_for(&i, &["contact:user.id:readonly"]).await;
    let cards = i.sandbox.sent_cards().len();
    let tasks = "/open-apis/task/v2/tasks";
    let calendars = "/open-apis/calendar/v4/calendars?page_size=5";
    // Three refused calls within the merge window (the later two 100 ms after the
    // first): passed back unchanged, one session for them all.
    let calls = [(tasks, 0), (calendars, 100), (tasks, 100)].map(|(path, after_ms)| {
        let request = client().get(url(&i, USER, path)).bearer_auth(API_TOKEN);
        async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            request.send().await
        }
    });
    let mut sessions = Vec::new();
    for res in futures_util::future::join_all(calls).await {
        let mut res = res.unwrap();
        assert_eq!(res.status().as_u16(), 400);
        let session = res
            .headers()
            .get("x-lark-auth-session")
            .expect("X-Lark-Auth-Session")
            .to_str()
            .unwrap()
            .to_string();
        sessions.push(session);
        let body = json_of(&mut res).await;
        assert_eq!(body["code"], 99_991_679);
        assert!(
            body["error"]["permission_violations"][0]["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("task:") || s.starts_with("calendar:")),
            "{body}"
        );
    }
    assert!(sessions.iter().all(|s| *s == sessions[0]), "{sessions:?}");
    assert_eq!(i.sandbox.api_requests().len(), 3, "not retried");
    let sent = i
        .sandbox
        .wait_for_sent_cards(cards + 1, WAIT)
        .await
        .unwrap();
    let card = sent[cards].card.to_string();
    for expected in [
        "task:task:read",
        "task:task:write",
        "calendar:calendar:readonly",
        "contact:user.id:readonly",
        "offline_access",
        "GET /open-apis/task/v2/tasks",
        "GET /open-apis/calendar/v4/calendars",
    ] {
        assert!(
            card.contains(expected),
            "{expected} not in the card: {card}"
        );
    }
    // Within 30 s, another refusal names the same session and sends no card.
    let res = get(&i, USER, tasks).await;
    assert_eq!(
        res.headers()
            .get("x-lark-auth-session")
            .unwrap()
            .to_str()
            .unwrap(),
        sessions[0]
    );
    assert_eq!(
        metric(&i, "lark_auth_openapi_proxy_scope_authorizations_total"),
        1.0
    );

    // The user approves: the same calls now succeed.
    answer_card(&i, cards, &sessions[0], UserChoice::Approve).await;
    wait_authorized(&i, &sessions[0]).await;
    assert_eq!(i.sandbox.sent_cards().len(), cards + 1, "one card in all");
    let mut res = get(&i, USER, tasks).await;
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers().get("x-lark-auth-session").is_none());
    assert_eq!(json_of(&mut res).await["code"], 0);
    let res = get(&i, USER, calendars).await;
    assert_eq!(res.status().as_u16(), 200);
    // The new grant holds the union: the scope granted before is kept.
    let mut res = client()
        .get(format!("{}/v1/grants", i.base_url()))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let grants = json_of(&mut res).await;
    let scopes = grants[0]["scopes"].to_string();
    for scope in [
        "contact:user.id:readonly",
        "task:task:read",
        "calendar:calendar:readonly",
    ] {
        assert!(scopes.contains(scope), "{scope} not in {scopes}");
    }
}

#[actix_rt::test]
async fn with_scope_authorization_off_a_missing_scope_is_only_passed_back() {
    let i = start_instance_with(|_, config| config.proxy.scope_authorization = false).await;
    authorize_user(&i).await;
    let cards = i.sandbox.sent_cards().len();
    let mut res = get(&i, USER, "/open-apis/task/v2/tasks").await;
    assert_eq!(res.status().as_u16(), 400);
    assert!(res.headers().get("x-lark-auth-session").is_none());
    assert_eq!(json_of(&mut res).await["code"], 99_991_679);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(i.sandbox.sent_cards().len(), cards, "no card");
    assert_eq!(i.sandbox.api_requests().len(), 1, "not retried");
}
