//! Bad input on the control API, through the real HTTP front of a whole service on the
//! sandbox: every malformed `open_id` (body or path), unknown or missing body fields,
//! oversized bodies, other content types and broken JSON get a JSON `4xx` that names the
//! field at fault, and nothing is stored and no card is sent.

mod service_common;

use service_common::{API_TOKEN, Instance, USER, WAIT, start_instance};

/// `open_id`s that are not the platform's shape.
fn bad_open_ids() -> Vec<String> {
    vec![
        String::new(),
        "ou_".into(),
        "on_7d8a6e6df7621556ce0d21922b676706".into(),
        "ou_a/../../b".into(),
        "ou_a\u{0}b".into(),
        "ou_a\nb".into(),
        "ou_a b".into(),
        "ou_é".into(),
        format!("ou_{}", "a".repeat(10_000)),
    ]
}

async fn post_json(i: &Instance, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let mut res = awc::Client::default()
        .post(format!("{}/v1/authorizations", i.base_url()))
        .bearer_auth(API_TOKEN)
        .send_json(body)
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or_default();
    (status, body)
}

/// Asserts that no session was stored and no card sent.
async fn assert_nothing_stored_or_sent(i: &Instance) {
    let mut res = awc::Client::default()
        .get(format!("{}/v1/authorizations", i.base_url()))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let sessions: serde_json::Value = res.json().await.unwrap();
    assert_eq!(sessions, serde_json::json!([]), "no session stored");
    assert!(i.sandbox.sent_cards().is_empty(), "no card sent");
}

#[actix_rt::test]
async fn an_authorization_for_a_malformed_open_id_is_refused_naming_the_field() {
    let i = start_instance().await;
    for open_id in bad_open_ids() {
        let (status, body) = post_json(&i, &serde_json::json!({ "open_id": open_id })).await;
        let shown: String = open_id.chars().take(20).collect();
        assert_eq!(status, 400, "{shown:?}: {body}");
        assert_eq!(body["error"], "invalid_open_id", "{shown:?}: {body}");
        assert_eq!(body["field"], "open_id", "{shown:?}: {body}");
    }
    assert_nothing_stored_or_sent(&i).await;
    // The check refuses the malformed, not the well-formed.
    let (status, body) = post_json(&i, &serde_json::json!({ "open_id": USER })).await;
    assert_eq!(status, 202, "{body}");
    i.sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
}

#[actix_rt::test]
async fn unknown_and_missing_body_fields_are_refused_naming_the_field() {
    let i = start_instance().await;
    let (status, body) = post_json(
        &i,
        &serde_json::json!({ "open_id": USER, "scope": ["contact:user.id:readonly"] }),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &"unknown_field".into()),
        "{body}"
    );
    assert_eq!(body["field"], "scope", "{body}");
    let (status, body) = post_json(&i, &serde_json::json!({ "scopes": [] })).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &"missing_field".into()),
        "{body}"
    );
    assert_eq!(body["field"], "open_id", "{body}");
    assert_nothing_stored_or_sent(&i).await;
}

#[actix_rt::test]
async fn a_malformed_open_id_in_a_grant_path_is_a_bad_request_not_a_vault_failure() {
    let i = start_instance().await;
    let client = awc::Client::default();
    let long = format!("ou_{}", "a".repeat(1_000));
    for path in [
        "/v1/grants/ou_a%00b/token".to_string(),
        "/v1/grants/ou_a%2F..%2Fb/token".to_string(),
        "/v1/grants/on_abc/token".to_string(),
        format!("/v1/grants/{long}/token"),
    ] {
        let mut res = client
            .get(format!("{}{path}", i.base_url()))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        assert_eq!(res.status().as_u16(), 400, "GET {path}: {body}");
        assert_eq!(body["error"], "invalid_open_id", "GET {path}: {body}");
        assert_eq!(body["field"], "open_id", "GET {path}: {body}");
    }
    for path in ["/v1/grants/ou_a%00b", "/v1/grants/ou_a%0Ab"] {
        let mut res = client
            .delete(format!("{}{path}", i.base_url()))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        assert_eq!(res.status().as_u16(), 400, "DELETE {path}: {body}");
        assert_eq!(body["field"], "open_id", "DELETE {path}: {body}");
    }
    // A well-formed id without a grant is still a 404.
    let res = client
        .get(format!("{}/v1/grants/{USER}/token", i.base_url()))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

#[actix_rt::test]
async fn oversized_bodies_other_content_types_and_broken_json_get_json_errors() {
    let i = start_instance().await;
    let client = awc::Client::default();
    let url = format!("{}/v1/authorizations", i.base_url());

    // Larger than the 64 KiB limit, otherwise valid.
    let scopes: Vec<String> = (0..5_000).map(|n| format!("scope:{n:010}")).collect();
    let big = serde_json::json!({ "open_id": USER, "scopes": scopes });
    assert!(big.to_string().len() > 64 * 1024);
    let mut res = client
        .post(&url)
        .bearer_auth(API_TOKEN)
        .send_json(&big)
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large", "{body}");

    let mut res = client
        .post(&url)
        .bearer_auth(API_TOKEN)
        .insert_header(("Content-Type", "text/plain"))
        .send_body(format!("{{\"open_id\": \"{USER}\"}}"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_media_type", "{body}");

    let mut res = client
        .post(&url)
        .bearer_auth(API_TOKEN)
        .insert_header(("Content-Type", "application/json"))
        .send_body("{\"open_id\": ")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));

    let res = client
        .get(format!("{}/metrics", i.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        401,
        "/metrics needs the bearer token"
    );

    assert_nothing_stored_or_sent(&i).await;
}
