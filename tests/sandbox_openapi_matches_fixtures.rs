//! The sandbox's OpenAPI answers have the shape of the documented samples in
//! tests/fixtures/openapi (same keys), so client tests against it mean something.

mod common;

use std::collections::BTreeSet;

use common::*;
use lark_auth::openapi::PkcePair;
use lark_auth::sandbox::DEFAULT_REDIRECT_URI;
use serde_json::{Value, json};

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

async fn call(method: &str, url: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let client = awc::Client::default();
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let mut response = match body {
        Some(body) => request.send_json(&body).await.unwrap(),
        None => request.send().await.unwrap(),
    };
    let bytes = response.body().limit(1 << 20).await.unwrap();
    (
        response.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap(),
    )
}

#[actix_rt::test]
async fn token_and_api_answers_have_the_fixture_keys() {
    let (sandbox, client) = openapi().await;
    let base = sandbox.base_url();

    let (status, tenant) = call(
        "POST",
        &format!("{base}/open-apis/auth/v3/tenant_access_token/internal"),
        None,
        Some(json!({"app_id": "cli_sandbox_app", "app_secret": "sandbox-secret"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&tenant),
        keys(&openapi_fixture("tenant_access_token_ok.json"))
    );
    let tenant_token = tenant["tenant_access_token"].as_str().unwrap().to_string();

    let pkce = PkcePair::generate();
    let url = client.authorize_url(DEFAULT_REDIRECT_URI, &["a"], "s", &pkce.challenge);
    let code = query_param(&sandbox.authorize(&url, "ou_test_user_1").unwrap(), "code").unwrap();
    let (status, grant) = call(
        "POST",
        &format!("{base}/open-apis/authen/v2/oauth/token"),
        None,
        Some(
            json!({"grant_type": "authorization_code", "client_id": "cli_sandbox_app",
                    "client_secret": "sandbox-secret", "code": code,
                    "redirect_uri": DEFAULT_REDIRECT_URI,
                    "code_verifier": pkce.verifier.expose()}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&grant),
        keys(&openapi_fixture("token_authorization_code_ok.json"))
    );

    let refresh = json!({"grant_type": "refresh_token", "client_id": "cli_sandbox_app",
                         "client_secret": "sandbox-secret",
                         "refresh_token": grant["refresh_token"]});
    let token_url = format!("{base}/open-apis/authen/v2/oauth/token");
    let (status, refreshed) = call("POST", &token_url, None, Some(refresh.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&refreshed),
        keys(&openapi_fixture("token_refresh_ok.json"))
    );
    let (status, reused) = call("POST", &token_url, None, Some(refresh)).await;
    assert_eq!(status, 400);
    let fixture = openapi_fixture("token_error_refresh_token_used.json");
    assert_eq!(keys(&reused), keys(&fixture));
    assert_eq!(reused["code"], fixture["code"]);
    assert_eq!(sandbox.refresh_token_reuse_violations(), 1);

    let (status, info) = call(
        "GET",
        &format!("{base}/open-apis/authen/v1/user_info"),
        refreshed["access_token"].as_str(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let fixture = openapi_fixture("user_info_ok.json");
    assert_eq!(keys(&info), keys(&fixture));
    assert_eq!(keys(&info["data"]), keys(&fixture["data"]));

    let request = openapi_fixture("im_message_create_request.json");
    let mut request = request.clone();
    request["receive_id"] = json!("ou_test_user_1");
    let (status, sent) = call(
        "POST",
        &format!("{base}/open-apis/im/v1/messages?receive_id_type=open_id"),
        Some(&tenant_token),
        Some(request),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let fixture = openapi_fixture("im_message_create_ok.json");
    assert_eq!(keys(&sent), keys(&fixture));
    assert_eq!(keys(&sent["data"]), keys(&fixture["data"]));
}

#[actix_rt::test]
async fn device_answers_have_the_fixture_keys() {
    let (sandbox, client) = openapi().await;
    let base = sandbox.base_url();
    let device = client.request_device_authorization(&[]).await.unwrap();
    let response = awc::Client::default()
        .post(format!("{base}/open-apis/authen/v2/oauth/token"))
        .send_form(&[
            ("grant_type", lark_auth::openapi::oauth::DEVICE_CODE_GRANT),
            ("device_code", device.device_code.expose().as_str()),
            ("client_id", "cli_sandbox_app"),
            ("client_secret", "sandbox-secret"),
        ])
        .await;
    let mut response = response.unwrap();
    let body: Value =
        serde_json::from_slice(&response.body().limit(1 << 20).await.unwrap()).unwrap();
    let fixture = openapi_fixture("token_device_authorization_pending.json");
    assert_eq!(keys(&body), keys(&fixture));
    assert_eq!(body["error"], fixture["error"]);

    let mut response = awc::Client::default()
        .post(format!("{base}/oauth/v1/device_authorization"))
        .basic_auth("cli_sandbox_app", "sandbox-secret")
        .send_form(&[
            ("client_id", "cli_sandbox_app"),
            ("scope", "offline_access"),
        ])
        .await
        .unwrap();
    let body: Value =
        serde_json::from_slice(&response.body().limit(1 << 20).await.unwrap()).unwrap();
    assert_eq!(
        keys(&body),
        keys(&openapi_fixture("device_authorization_ok.json"))
    );
}

#[actix_rt::test]
async fn plain_api_errors_have_the_fixture_keys() {
    use lark_auth::sandbox::{OpenApiFault, OpenApiRoute};
    let (sandbox, client) = openapi().await;
    let base = sandbox.base_url();
    let pkce = PkcePair::generate();
    let url = client.authorize_url(
        DEFAULT_REDIRECT_URI,
        &["offline_access"],
        "s",
        &pkce.challenge,
    );
    let code = query_param(&sandbox.authorize(&url, "ou_test_user_1").unwrap(), "code").unwrap();
    let (_, grant) = call(
        "POST",
        &format!("{base}/open-apis/authen/v2/oauth/token"),
        None,
        Some(
            json!({"grant_type": "authorization_code", "client_id": "cli_sandbox_app",
                    "client_secret": "sandbox-secret", "code": code,
                    "redirect_uri": DEFAULT_REDIRECT_URI,
                    "code_verifier": pkce.verifier.expose()}),
        ),
    )
    .await;
    let token = grant["access_token"].as_str().unwrap();
    let tasks = format!("{base}/open-apis/task/v2/tasks");

    // Missing scope: 99991679 with error.permission_violations[{subject, type}].
    let (status, refused) = call("GET", &tasks, Some(token), None).await;
    assert_eq!(status, 400);
    let fixture = openapi_fixture("api_error_user_scope_insufficient.json");
    assert_eq!(keys(&refused), keys(&fixture));
    assert_eq!(refused["code"], fixture["code"]);
    assert_eq!(keys(&refused["error"]), keys(&fixture["error"]));
    assert_eq!(
        refused["error"]["permission_violations"],
        fixture["error"]["permission_violations"]
    );

    // Expired user token: 99991677.
    sandbox.expire_access_tokens("ou_test_user_1");
    let (status, expired) = call("GET", &tasks, Some(token), None).await;
    assert_eq!(status, 400);
    let fixture = openapi_fixture("api_error_user_token_expired.json");
    assert_eq!(keys(&expired), keys(&fixture));
    assert_eq!(expired["code"], fixture["code"]);

    // Rate limited: 99991400.
    sandbox.inject_openapi_fault(
        OpenApiRoute::Api,
        OpenApiFault::RateLimited { reset_secs: 3 },
    );
    let (status, limited) = call("GET", &tasks, Some(token), None).await;
    assert_eq!(status, 429);
    let fixture = openapi_fixture("api_error_rate_limited.json");
    assert_eq!(keys(&limited), keys(&fixture));
    assert_eq!(limited["code"], fixture["code"]);
}
